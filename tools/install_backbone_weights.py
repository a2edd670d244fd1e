"""Kept for existing commands: the same as the installed command ``efficientad-install-backbone-weights``."""

import sys

from efficientad_plugin.cli.install_backbone_weights import command, main  # noqa: F401 (main: tests and scripts)

if __name__ == "__main__":
    sys.exit(command())
