"""Kept for existing commands: the same as the installed command ``efficientad-bench-inference``."""

import sys

from efficientad_plugin.cli.bench_inference import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
