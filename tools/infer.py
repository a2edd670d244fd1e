"""Kept for existing commands: the same as the installed command ``efficientad-infer``."""

import sys

from efficientad_plugin.cli.infer import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
