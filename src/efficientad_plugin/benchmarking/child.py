"""Run one variant of a benchmark in a fresh Python process and collect the JSON it writes.

Each variant gets its own process so that its peak memory, its imports and its thread pools are its own. The child
is ``python -m <module> <arguments> --child-result <file>``; the module writes its result with
:func:`write_child_result`. The standard library has no such helper (``concurrent.futures`` keeps workers alive
and pickles results; Lightning and anomalib launch training processes, not measurement ones).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_RESULT = "--child-result"


@dataclass(frozen=True)
class ChildRun:
    """The child's JSON result (``None`` when it wrote none) and its finished process (status, stdout, stderr)."""

    result: Any
    process: subprocess.CompletedProcess[str]

    @property
    def failed(self) -> bool:
        """Whether the child exited with a non-zero status or wrote no result."""
        return self.process.returncode != 0 or self.result is None

    def log(self) -> str:
        """Everything the child printed, stdout then stderr."""
        return self.process.stdout + self.process.stderr


def run_in_child(module: str, arguments: Sequence[str], env: Mapping[str, str] | None = None) -> ChildRun:
    """Run ``python -m module *arguments --child-result <temporary file>`` and read the file back."""
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.json"
        process = subprocess.run([sys.executable, "-m", module, *map(str, arguments), CHILD_RESULT, str(result_file)],
                                 env=None if env is None else dict(env), capture_output=True, text=True, check=False)
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
    return ChildRun(result, process)


def add_child_result_argument(parser: argparse.ArgumentParser) -> None:
    """The hidden option through which :func:`run_in_child` tells a child where to write its result."""
    parser.add_argument(CHILD_RESULT, type=Path, help=argparse.SUPPRESS)


def write_child_result(path: Path, result: Any) -> None:
    """Write a child's result as JSON for the parent."""
    Path(path).write_text(json.dumps(result))
