"""What a diagnosis check hands the report: findings with a severity and a suggestion, facts and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How much a finding is likely to cost: ``error`` breaks results, ``warning`` costs accuracy, ``info`` notes."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for errors, 1 for warnings, 2 for notes: the report lists findings in this order."""
        return (Severity.ERROR, Severity.WARNING, Severity.INFO).index(self)


@dataclass(frozen=True)
class Finding:
    """One observation about the data or the model and what to do about it."""

    severity: Severity
    check: str
    message: str
    suggestion: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"severity": self.severity.value, "check": self.check, "message": self.message,
                "suggestion": self.suggestion}


@dataclass(frozen=True)
class Figure:
    """A PNG for the report, with a caption."""

    caption: str
    png: bytes


@dataclass
class Section:
    """One part of the report: its findings, its measured facts (also written to the JSON) and its figures."""

    title: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def add(self, severity: Severity, check: str, message: str, suggestion: str) -> None:
        """Record a finding."""
        self.findings.append(Finding(severity, check, message, suggestion))
