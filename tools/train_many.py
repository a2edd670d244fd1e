"""Kept for existing commands: the same as the installed command ``efficientad-train-many``."""

import sys

from efficientad_plugin.cli.train_many import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
