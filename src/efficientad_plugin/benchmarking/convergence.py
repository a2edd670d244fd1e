"""How EfficientAD's accuracy grows with training: train once, snapshot at chosen steps, evaluate each snapshot.

A snapshot is a Lightning checkpoint saved when the run reaches one of the chosen steps, with the training time
so far (evaluation excluded). After training, each snapshot is loaded, its map normalisation and thresholds are
fitted on the validation split (normal images only, as at the end of a normal run) and it is tested: image and
pixel AUROC, AU-PRO, F1. Rows go to ``results.json`` as they come, so an interrupted run (resumed from the
model's ``last_step.ckpt``) or a rerun evaluates only what is missing. Neither anomalib nor Lightning evaluates a
run at several step counts; ``anomalib benchmark`` trains one model per budget.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from ..callbacks import newest_step_checkpoint, save_atomically
from ..hardware import cpu_description, large_allocations_to_mmap
from .metrics import evaluator, reported

logger = logging.getLogger(__name__)

RESULTS = "results.json"


class SnapshotAtSteps(Callback):
    """Save ``step_<n>.ckpt`` in ``folder`` when training reaches each of ``steps``, with its training seconds.

    Beside each snapshot, ``step_<n>.json`` holds the seconds (summed over resumptions: they travel in the
    callback's checkpoint state) and the mean training loss since the previous snapshot, a yardstick between
    recipes that needs no test image.
    """

    def __init__(self, steps: Sequence[int], folder: str | Path) -> None:
        self.steps = sorted(set(steps))
        self.folder = Path(folder)
        self.seconds, self._began = 0.0, 0.0
        self.loss_sum, self.loss_count = 0.0, 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,  # noqa: ANN401
                           *args: object) -> None:
        now = time.perf_counter()
        self.seconds, self._began = self.seconds + now - self._began, now
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss_sum, self.loss_count = self.loss_sum + float(loss), self.loss_count + 1
        step = trainer.global_step
        if step in self.steps:
            save_atomically(trainer, self.folder / f"step_{step}.ckpt")
            mean_loss = self.loss_sum / self.loss_count if self.loss_count else None
            # atomic: a train=False process beside this run reads it as soon as it exists
            _write_atomically(self.folder / f"step_{step}.json", json.dumps(
                {"step": step, "train_seconds": self.seconds, "train_loss": mean_loss}))
            self.loss_sum, self.loss_count = 0.0, 0
            self._began = time.perf_counter()  # saving is not training

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "loss_sum": self.loss_sum, "loss_count": self.loss_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict["seconds"])
        self.loss_sum = float(state_dict.get("loss_sum", 0.0))
        self.loss_count = int(state_dict.get("loss_count", 0))


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: a reader never sees a partial file.

    ``save_atomically`` does this for a Trainer's checkpoint only. The temporary name holds the process id, so two
    processes never write the same one; opened normally, it gets the umask's permissions (tempfile's are 0600).
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` while the block runs (POSIX flock: not Windows)."""
    import fcntl  # POSIX only; imported here so that the rest of this module still imports elsewhere

    # a lock file beside, not ``path`` itself: ``path`` is replaced by each write, so a lock on it would be lost
    with path.with_name(f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        yield


def _load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def merge_results(path: Path, metadata: dict[str, Any], rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Add ``rows`` (replacing those of the same step) and ``metadata`` to the results file ``path``; return it.

    A training run and a ``train=False`` evaluation beside it both merge into one file: the read, merge and write
    hold a lock, so neither loses the other's rows, and the write is atomic, so no reader sees half a file.
    """
    with _locked(path):
        results = {**_load_results(path), **metadata}
        steps = {row["step"] for row in rows}
        results["rows"] = sorted([*(old for old in results["rows"] if old["step"] not in steps), *rows],
                                 key=lambda each: each["step"])
        _write_atomically(path, json.dumps(results, indent=2))
    return results


def _evaluate(model: Any, datamodule: Any, checkpoint: Path | None, workdir: Path) -> dict[str, float]:  # noqa: ANN401
    from anomalib.engine import Engine

    engine = Engine(default_root_dir=workdir, logger=False, enable_progress_bar=False, devices=1)
    learning = engine.validate(model, datamodule, ckpt_path=checkpoint)[0]  # fits map normalisation and thresholds
    return reported({**learning, **engine.test(model, datamodule)[0]})  # a test value wins over a validation one


def convergence_run(model: Any, datamodule: Any, steps: Sequence[int], output: str | Path,  # noqa: ANN401
                    recipe: str, resume: bool = True, accelerator: str = "auto", precision: str = "32",
                    start_from: str | Path | None = None, train: bool = True) -> dict[str, Any]:
    """Train ``model`` to ``max(steps)`` once, snapshot at ``steps``, evaluate each snapshot; return the results.

    ``model.max_steps`` is set to ``max(steps)``: the learning-rate schedule is that of a run of that length. With
    ``resume`` a run interrupted in training continues from its ``last_step.ckpt``, and finished snapshots are
    not evaluated again. ``start_from`` continues a snapshot of a shorter run of the same recipe when this run
    has no checkpoint yet: its steps, training seconds and data order carry on, and the learning-rate schedule
    becomes this run's (e.g. the paper recipe is identical up to 95 % of the shorter run's steps). The results
    (``<output>/results.json``) name the recipe, the precision, the data and the machine. ``train=False``
    evaluates the snapshots saved so far and trains nothing: partial results of a run that goes on (in another
    process) or resumes in a later session.
    """
    from anomalib.engine import Engine

    output = Path(output)
    snapshots = output / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    results_path = output / RESULTS
    model.max_steps = max(steps)
    model.evaluator = evaluator()
    last = max(steps)
    if train and not (snapshots / f"step_{last}.ckpt").is_file():
        engine = Engine(default_root_dir=output / "train", logger=False, devices=1, accelerator=accelerator,
                        precision=precision, callbacks=[SnapshotAtSteps(steps, snapshots)])
        resume_from = newest_step_checkpoint(output / "train") if resume else None
        if resume_from is None and start_from is not None:
            resume_from = Path(start_from)
        engine.fit(model, datamodule, ckpt_path=resume_from)
    metadata = {"recipe": recipe, "model": type(model).__name__, "machine": cpu_description(),
                "platform": platform.platform(), "data": _describe(datamodule), "steps": sorted(set(steps)),
                "precision": precision}
    if start_from is not None:  # this run continues that snapshot, also when it resumed its own checkpoint since
        metadata["started_from"] = str(start_from)
    results = {**_load_results(results_path), **metadata}
    for step in sorted(set(steps)):
        checkpoint = snapshots / f"step_{step}.ckpt"
        # the JSON is written after the snapshot: without it the run has not reached this step (train=False)
        if any(row["step"] == step for row in results["rows"]) or not checkpoint.with_suffix(".json").is_file():
            continue
        started = time.perf_counter()
        metrics = _evaluate(model, datamodule, checkpoint, output / "evaluate")
        snapshot = json.loads(checkpoint.with_suffix(".json").read_text())
        row = {"step": step, "train_minutes": round(snapshot["train_seconds"] / 60, 2),
               "train_loss": snapshot.get("train_loss"), **metrics,
               "evaluate_seconds": round(time.perf_counter() - started, 1)}
        choice = getattr(model, "branch_choice", None)  # EfficientAdPlugin: the weights fitted with the maps
        if choice is not None:
            row["branch_choice"] = choice.to_dict()
        # merged into the file as it is now: another process (train=False beside a training run) may have added rows
        merge_results(results_path, metadata, [row])
        logger.info("step %d: %s", step, metrics)
    return merge_results(results_path, metadata)


def reference_run(model: Any, datamodule: Any, output: str | Path, recipe: str,  # noqa: ANN401
                  accelerator: str = "auto") -> dict[str, Any]:
    """A training-free reference (PatchCore): fit once, test; its fit time stands on the minutes axis."""
    from anomalib.engine import Engine

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.evaluator = evaluator()
    engine = Engine(default_root_dir=output / "train", logger=False, devices=1, accelerator=accelerator)
    started = time.perf_counter()
    # PatchCore's greedy coreset otherwise grows glibc's heap by MBs per iteration (OOM on a 24 GB machine).
    with large_allocations_to_mmap():
        engine.fit(model, datamodule)
    fit_seconds = time.perf_counter() - started
    metrics = engine.test(model, datamodule)[0]
    results = {"recipe": recipe, "model": type(model).__name__, "machine": cpu_description(),
               "platform": platform.platform(), "data": _describe(datamodule), "reference": True,
               "rows": [{"step": None, "train_minutes": round(fit_seconds / 60, 2),
                         **reported(metrics)}]}
    _write_atomically(output / RESULTS, json.dumps(results, indent=2))
    return results


def _describe(datamodule: Any) -> str:  # noqa: ANN401
    parts = [type(datamodule).__name__]
    parts += [f"{name}={getattr(datamodule, name)}" for name in ("root", "category") if hasattr(datamodule, name)]
    return " ".join(str(part) for part in parts)


def plot_curves(results_files: Sequence[str | Path], output: str | Path, metric: str = "image_AUROC",
                x_axis: str = "minutes", branches: bool = False) -> Path:
    """``metric`` against training minutes or steps, one line per results file, references as horizontal lines.

    Minutes are each run's own wall clock, so they compare only runs made alike (same CPU kind, threads, load);
    steps compare recipes on any machine (time = steps x the machine's seconds per step, docs/performance.md).
    ``branches`` adds, for runs that measured them, dashed lines of the local map alone, the global map alone and
    the paper's average (raw maps, before anomalib's post-processing).
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    if x_axis not in ("minutes", "steps"):
        msg = f"x_axis must be 'minutes' or 'steps', got {x_axis!r}."
        raise ValueError(msg)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for path in results_files:
        results = json.loads(Path(path).read_text())
        rows = [row for row in results["rows"] if metric in row]
        if not rows:
            continue
        fields = dict(part.split("=", 1) for part in results["data"].split()[1:] if "=" in part)
        label = f"{results['recipe']} ({fields.get('category') or Path(fields.get('root', '')).name})"
        values = [row[metric] for row in rows]
        if results.get("reference"):
            line = axis.axhline(values[0], linestyle="--", linewidth=1, color="grey",
                                label=f"{label}, fit {rows[0]['train_minutes']:.0f} min")
            if x_axis == "minutes":
                axis.scatter([rows[0]["train_minutes"]], values, marker="*", s=120, zorder=3,
                             color=line.get_color())
        else:
            positions = [row["train_minutes"] if x_axis == "minutes" else row["step"] for row in rows]
            axis.plot(positions, values, marker="o", label=label)
            branch_metric = metric.removeprefix("image_").removeprefix("pixel_")
            level = metric[: len(metric) - len(branch_metric)]
            for branch in ("local", "global", "paper") if branches else ():
                name = f"{branch}_{level}{branch_metric}"
                if all(name in row for row in rows):
                    axis.plot(positions, [row[name] for row in rows], linestyle="--", marker=".",
                              label=f"{label}: {branch} map (raw)" if branch != "paper" else
                              f"{label}: paper's 0.5/0.5 average (raw)")
            for position, row in zip(positions, rows, strict=True):
                axis.annotate(str(row["step"]) if x_axis == "minutes" else f"{row['train_minutes']:.0f} min",
                              (position, row[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("training minutes (wall clock, evaluation excluded)" if x_axis == "minutes"
                    else "training steps (batch 1)")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    # below the axes: with the branch lines the legend would cover the curves
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return output
