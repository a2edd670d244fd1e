"""Convergence curves: train once, evaluate snapshots at several step counts; plot AUROC against training minutes.

Subcommands (each takes --config <yaml> in anomalib's format: model and data as class_path/init_args):

  run        train a model once to the largest of --steps, snapshot and evaluate at each (resumable: rerun it)
  reference  fit and test a training-free reference (PatchCore) in the same harness, fit time as minutes
  plot       one PNG of a metric against training minutes from several results.json files

example: efficientad-convergence run --config configs/convergence/magnetic_tile_paper.yaml
         efficientad-convergence plot --results 'docs/convergence/*/results.json' --output docs/convergence/curves.png
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule

import efficientad_plugin  # noqa: F401 (registers EfficientAdPlugin for class_path resolution)
from efficientad_plugin.benchmarking.convergence import convergence_run, plot_curves, reference_run
from efficientad_plugin.cli import console_command


def run(model: AnomalibModule, data: AnomalibDataModule, steps: list[int], output: Path, recipe: str,
        seed: int = 0, accelerator: str = "auto", precision: str = "32", start_from: Path | None = None,
        train: bool = True) -> dict:
    """Train once to max(steps), snapshot and evaluate at each step.

    Args:
        model: the model (EfficientAdPlugin with the recipe's arguments); its max_steps is set to max(steps).
        data: the datamodule (MVTec layout; val_split_mode from_train for normal-only validation).
        steps: step counts to evaluate, e.g. [250, 500, 1000, 2000, 4000].
        output: folder for snapshots, the training run and results.json.
        recipe: the name of this recipe on the plot.
        seed: seed for Lightning (data order, initialisation).
        accelerator: Lightning accelerator.
        precision: Lightning precision, e.g. 32 or bf16-mixed.
        start_from: a snapshot (step_<n>.ckpt) of a shorter run of the same recipe to continue from.
        train: false evaluates the snapshots saved so far and trains nothing (e.g. beside the running run).
    """
    from lightning.pytorch import seed_everything

    seed_everything(seed)
    return convergence_run(model, data, steps, output, recipe, accelerator=accelerator, precision=precision,
                           start_from=start_from, train=train)


def reference(model: AnomalibModule, data: AnomalibDataModule, output: Path, recipe: str, seed: int = 0,
              accelerator: str = "auto") -> dict:
    """Fit and test a training-free reference (e.g. PatchCore-Lite0, 1 % coreset).

    Args:
        model: the reference model.
        data: the same datamodule as the curves.
        output: folder for its results.json.
        recipe: its name on the plot.
        seed: seed for Lightning.
        accelerator: Lightning accelerator.
    """
    from lightning.pytorch import seed_everything

    seed_everything(seed)
    return reference_run(model, data, output, recipe, accelerator=accelerator)


def plot(results: str | list[str], output: Path, metric: str = "image_AUROC", x_axis: str = "minutes",
         branches: bool = False) -> str:
    """Plot curves from results files.

    Args:
        results: a results.json file or glob pattern, or a list of them (``'["a/*.json", "b.json"]'``).
        output: the PNG to write.
        metric: image_AUROC, pixel_AUROC, pixel_AUPRO, image_F1Score or pixel_F1Score.
        x_axis: minutes (each run's wall clock) or steps (comparable across machines).
        branches: also a line per branch (local, global, the paper's average) where a run measured them.
    """
    patterns = [results] if isinstance(results, str) else results
    files = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    if not files:
        msg = f"No results files match {results}."
        raise FileNotFoundError(msg)
    return str(plot_curves(files, output, metric, x_axis, branches))


def main(argv: list[str] | None = None) -> object:
    """Run one subcommand."""
    from jsonargparse import CLI

    # as_positional=False: every argument is a flag, so a config file can be completed (or overridden) by flags
    return CLI([run, reference, plot], args=argv, description=__doc__, as_positional=False)


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
