"""Kept for existing commands: the same as the installed command ``efficientad-false-alarms``."""

import sys

from efficientad_plugin.cli.false_alarms import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
