"""False alarms on normal test images: do the thresholds hold on parts the model never saw?

For each false-alarm rate (and anomalib's default threshold beside them) the model's thresholds are fitted on the
normal validation images, the test split runs through the real post-processing, and the false alarms on normal
test images are compared with the 95 % interval that the validation and test sizes allow; defect recall is shown.

example: efficientad-false-alarms --config configs/convergence/magnetic_tile_paper.yaml \\
             --ckpt_path results/.../step_1000.ckpt --rates '[0.01, 0.05]' --output results/false_alarms
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule

import efficientad_plugin  # noqa: F401 (registers EfficientAdPlugin for class_path resolution)
from efficientad_plugin.benchmarking.false_alarms import false_alarm_check, markdown_table
from efficientad_plugin.cli import console_command


def check(model: AnomalibModule, data: AnomalibDataModule, ckpt_path: str | None = None,
          rates: list[float] | None = None,
          output: Path = Path("results/false_alarms"), accelerator: str = "auto") -> list[dict]:
    """Fit the thresholds per setting on validation, count false alarms on test, write table.md and rows.json.

    Args:
        model: the model as trained (class_path/init_args of its config).
        data: its datamodule; validation must hold the normal images the thresholds are fitted on.
        ckpt_path: the trained checkpoint (required).
        rates: false-alarm rates to check, e.g. [0.01, 0.05] (the default).
        output: folder for rows.json and table.md.
        accelerator: Lightning accelerator.
    """
    if ckpt_path is None or not Path(ckpt_path).is_file():
        msg = f"--ckpt_path {ckpt_path} is not a file: pass the trained model's .ckpt."
        raise FileNotFoundError(msg)
    rows = false_alarm_check(model, data, rates or [0.01, 0.05], ckpt_path=ckpt_path, workdir=output / "engine",
                             accelerator=accelerator)
    output.mkdir(parents=True, exist_ok=True)
    (output / "rows.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(rows)
    (output / "table.md").write_text(table + "\n")
    print(table)
    return rows


def main(argv: list[str] | None = None) -> object:
    """Run the check."""
    from jsonargparse import CLI

    return CLI(check, args=argv, description=__doc__)


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
