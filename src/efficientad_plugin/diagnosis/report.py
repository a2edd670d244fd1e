"""The diagnosis as one self-contained HTML page (figures embedded as data URIs) and a JSON summary."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .findings import Finding, Section, Severity

SHOWN_ITEMS = 20  # list entries shown in the page; the JSON holds all
_COLOURS = {Severity.ERROR: "#c62828", Severity.WARNING: "#ef6c00", Severity.INFO: "#1565c0"}
_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px;
vertical-align: top; text-align: left; } th { background: #f3f3f3; } figure { margin: 1em 0; }
img { max-width: 100%; } .severity { color: white; font-weight: bold; }
"""


def sorted_findings(sections: Sequence[Section]) -> list[Finding]:
    """Every section's findings, errors first."""
    return sorted((finding for section in sections for finding in section.findings),
                  key=lambda finding: finding.severity.rank)


def summary(title: str, sections: Sequence[Section]) -> dict[str, Any]:
    """The JSON summary: counts per severity, the findings (errors first) and each section's facts."""
    findings = sorted_findings(sections)
    return {"title": title,
            "severity_counts": {severity.value: sum(f.severity == severity for f in findings) for severity in Severity},
            "findings": [finding.as_dict() for finding in findings],
            "facts": {section.title: section.facts for section in sections}}


def _jsonable(value: Any) -> Any:  # noqa: ANN401 (numpy scalars and paths in facts)
    return value.item() if hasattr(value, "item") else str(value)


def _cell(value: Any) -> str:  # noqa: ANN401 (any fact)
    """A fact as HTML: dicts as nested tables, long lists cut, floats to 4 significant digits."""
    if isinstance(value, dict | list | tuple) and not value:
        return "none"
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{_cell(item)}</td></tr>"
                       for key, item in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list | tuple):
        shown = [_cell(item) for item in value[:SHOWN_ITEMS]]
        more = [f"... {len(value) - SHOWN_ITEMS} more (see summary.json)"] if len(value) > SHOWN_ITEMS else []
        separator = ", " if all(isinstance(item, int | float | str) for item in value) else "<br>"
        return separator.join(shown + more)
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _findings_table(findings: Sequence[Finding]) -> str:
    if not findings:
        return "<p>No findings.</p>"
    rows = "".join(
        f'<tr><td class="severity" style="background:{_COLOURS[finding.severity]}">{finding.severity.value}</td>'
        f"<td>{html.escape(finding.check)}</td><td>{html.escape(finding.message)}</td>"
        f"<td>{html.escape(finding.suggestion)}</td></tr>" for finding in findings)
    return f"<table><tr><th>severity</th><th>check</th><th>finding</th><th>what to do</th></tr>{rows}</table>"


def render_html(title: str, sections: Sequence[Section]) -> str:
    """The report page: all findings first, then each section's facts and figures."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Findings</h2>", _findings_table(sorted_findings(sections))]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>{_cell(section.facts)}")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}">'
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(title: str, sections: Sequence[Section], output: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` into the folder ``output``; return both paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    page, data = output / "report.html", output / "summary.json"
    page.write_text(render_html(title, sections), encoding="utf-8")
    data.write_text(json.dumps(summary(title, sections), indent=2, default=_jsonable), encoding="utf-8")
    return page, data
