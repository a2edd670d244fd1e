"""Kept for existing commands: the same as the installed command ``efficientad-distill-teacher``."""

import sys

from efficientad_plugin.cli.distill_teacher import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
