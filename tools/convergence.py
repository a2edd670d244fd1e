"""Kept for existing commands: the same as the installed command ``efficientad-convergence``."""

import sys

from efficientad_plugin.cli.convergence import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
