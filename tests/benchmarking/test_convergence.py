"""Convergence curves: one training run, snapshots at chosen steps, each evaluated; reruns evaluate nothing twice."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.benchmarking.convergence import RESULTS, convergence_run, merge_results, plot_curves
from efficientad_plugin.callbacks import newest_step_checkpoint


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", train_batch_size=1, eval_batch_size=4, num_workers=0,
                   val_split_mode="from_train", val_split_ratio=0.2, seed=0)


@pytest.mark.slow
def test_snapshots_are_evaluated_at_their_steps_and_a_rerun_adds_nothing(synthetic_root: Path, teacher_file: Path,
                                                                         penalty_folder: Path, tmp_path: Path) -> None:
    def model() -> EfficientAdPlugin:
        return EfficientAdPlugin(teacher_weights=str(teacher_file), penalty_dir=str(penalty_folder),
                                 checkpoint_every_n_steps=1)

    results = convergence_run(model(), _datamodule(synthetic_root), [1, 3], tmp_path, "paper", accelerator="cpu")
    rows = results["rows"]
    assert [row["step"] for row in rows] == [1, 3]
    assert rows[0]["train_minutes"] < rows[1]["train_minutes"]  # three steps take longer than one
    for row in rows:
        assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(row)
        assert row["train_loss"] > 0  # the mean training loss since the previous snapshot
        # each branch alone and the paper's average, what the networks learnt, and the weights with their reason
        assert {f"{branch}_image_AUROC" for branch in ("local", "global", "paper")} <= set(row)
        # three steps: neither network has learnt the teacher (0 = predicting each channel's mean, 1 = a copy)
        assert -0.5 < row["val_autoencoder_explained_variance"] < 0.5
        assert -0.5 < row["val_student_explained_variance"] < 0.5
        assert row["branch_choice"]["rule"] == "auto"  # the default
        assert row["val_global_branch_weight"] == row["branch_choice"]["weights"][1]
    assert results["recipe"] == "paper" and "synthetic" in results["data"] and results["precision"] == "32"
    # the snapshot of step 1 is another model than that of step 3
    snapshots = tmp_path / "snapshots"
    assert (snapshots / "step_1.ckpt").read_bytes() != (snapshots / "step_3.ckpt").read_bytes()
    written = json.loads((tmp_path / RESULTS).read_text())
    assert written["rows"] == rows

    again = convergence_run(model(), _datamodule(synthetic_root), [1, 3], tmp_path, "paper", accelerator="cpu")
    assert again["rows"] == rows  # nothing retrained, nothing re-evaluated

    # train=False evaluates the snapshots reached so far (as beside a run still training) and trains nothing
    (tmp_path / RESULTS).unlink()
    step_3 = (snapshots / "step_3.json").read_text()
    (snapshots / "step_3.json").unlink()  # as if the run had not reached step 3 yet
    checkpoints = {path: path.stat().st_mtime_ns for path in (tmp_path / "train").rglob("*.ckpt")}
    partial = convergence_run(model(), _datamodule(synthetic_root), [1, 3], tmp_path, "paper", accelerator="cpu",
                              train=False)
    assert [row["step"] for row in partial["rows"]] == [1]
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "train").rglob("*.ckpt")} == checkpoints
    (snapshots / "step_3.json").write_text(step_3)
    completed = convergence_run(model(), _datamodule(synthetic_root), [1, 3], tmp_path, "paper", accelerator="cpu",
                                train=False)
    assert [row["step"] for row in completed["rows"]] == [1, 3]
    assert completed["rows"][0] == partial["rows"][0]  # step 1 kept, not evaluated again

    # a snapshot (its evaluator has AU-PRO) loads into a model with anomalib's default metrics, as the false-alarm
    # check loads it; without on_load_checkpoint's filter that fails on AU-PRO's fpr_limit buffer
    plain = model()
    snapshot = torch.load(snapshots / "step_3.ckpt", map_location="cpu", weights_only=False)
    assert "evaluator.test_metrics.4.fpr_limit" in snapshot["state_dict"]
    Engine(default_root_dir=tmp_path / "plain", logger=False, accelerator="cpu", devices=1).validate(
        plain, _datamodule(synthetic_root), ckpt_path=snapshots / "step_3.ckpt")
    assert plain.model.anomaly_map_generator.is_fitted

    # a run started from the step-1 snapshot continues it: at step 3 it is the model of the run that went on
    continued = convergence_run(model(), _datamodule(synthetic_root), [3], tmp_path / "continued", "paper",
                                accelerator="cpu", start_from=snapshots / "step_1.ckpt")
    assert continued["started_from"] == str(snapshots / "step_1.ckpt")
    assert continued["rows"][0]["train_minutes"] >= rows[0]["train_minutes"]  # the snapshot's seconds carry on
    weights = [torch.load(folder / "snapshots" / "step_3.ckpt", map_location="cpu", weights_only=False)["state_dict"]
               for folder in (tmp_path, tmp_path / "continued")]
    for name in ("model.student.conv1.weight", "model.autoencoder.encoder.0.weight"):
        # equal up to float rounding after a reload, which Adam's normalised steps amplify for a few weights with
        # near-zero gradients (tests/integration/test_reproducibility.py); a step at another rate or on another
        # image would move most weights by ~lr = 1e-4
        difference = (weights[0][name] - weights[1][name]).abs()
        assert float(difference.mean()) < 1e-6 and float(difference.max()) < 1e-3, (name, difference.mean())

    picture = plot_curves([tmp_path / RESULTS], tmp_path / "curves.png")
    with Image.open(picture) as image:
        assert image.size[0] > 100
        plain = np.asarray(image.convert("RGB"))
    with Image.open(plot_curves([tmp_path / RESULTS], tmp_path / "branches.png", branches=True)) as image:
        assert not np.array_equal(np.asarray(image.convert("RGB")), plain)  # the branch lines are drawn


@pytest.mark.slow
def test_command_takes_every_argument_as_a_flag(tmp_path: Path) -> None:
    """The subcommands' arguments are flags (docstring examples; a --config completed by --output)."""
    from efficientad_plugin.cli.convergence import main

    results = {"recipe": "paper", "data": "Folder root=x", "rows": [
        {"step": 250, "train_minutes": 27.0, "image_AUROC": 0.63}, {"step": 500, "train_minutes": 50.0,
                                                                    "image_AUROC": 0.68}]}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RESULTS).write_text(json.dumps(results))
    written = main(["plot", "--results", f"[{tmp_path}/*/{RESULTS}]", "--output", str(tmp_path / "curves.png")])
    assert Path(written).is_file()
    reference = {"recipe": "PatchCore", "data": "Folder root=x", "reference": True,
                 "rows": [{"step": None, "train_minutes": 40.0, "image_AUROC": 0.8}]}
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / RESULTS).write_text(json.dumps(reference))
    stepped = main(["plot", "--results", f"[{tmp_path}/*/{RESULTS}]", "--x_axis", "steps",
                    "--output", str(tmp_path / "steps.png")])
    assert Path(stepped).read_bytes() != Path(written).read_bytes()
    # one glob as a plain string, as the docs write it
    globbed = main(["plot", "--results", f"{tmp_path}/*/{RESULTS}", "--output", str(tmp_path / "glob.png")])
    listed = main(["plot", "--results", f"[{tmp_path}/*/{RESULTS}]", "--output", str(tmp_path / "list.png")])
    assert Path(globbed).read_bytes() == Path(listed).read_bytes()
    with pytest.raises(ValueError, match="x_axis"):
        plot_curves([tmp_path / "run" / RESULTS], tmp_path / "hours.png", x_axis="hours")
    with pytest.raises(SystemExit):  # positionals are gone: a bare path is not an argument
        main(["plot", str(tmp_path / "run" / RESULTS), str(tmp_path / "other.png")])


@pytest.mark.slow
def test_reference_fits_once_and_writes_one_row_with_its_fit_minutes(synthetic_root: Path, tmp_path: Path) -> None:
    from anomalib.models import Patchcore

    from efficientad_plugin.benchmarking.convergence import reference_run

    # untrained backbone: nothing is downloaded; the harness, not PatchCore's quality, is under test
    model = Patchcore(backbone="resnet18", layers=["layer2"], pre_trained=False, coreset_sampling_ratio=0.01)
    results = reference_run(model, _datamodule(synthetic_root), tmp_path, "PatchCore test", accelerator="cpu")
    assert results["reference"] is True and results["recipe"] == "PatchCore test"
    (row,) = results["rows"]
    assert row["step"] is None and row["train_minutes"] > 0
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(row)
    assert json.loads((tmp_path / RESULTS).read_text()) == results


def _step_checkpoint(path: Path, step: int) -> Path:
    """A checkpoint as Lightning writes it, reduced to what resuming reads first (global_step) and some weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "epoch": 0, "state_dict": {"model.weight": torch.zeros(8)}}, path)
    return path


def test_resume_takes_the_step_checkpoint_trained_furthest_of_all_versions(tmp_path: Path) -> None:
    """Not the first path in sorted order (v0, the oldest fit), not the last (v9 > v10 as text), not the newest file."""
    train = tmp_path / "train"
    assert newest_step_checkpoint(train) is None  # no fit yet
    run = train / "EfficientAdPlugin"  # anomalib's layout: one v<n> folder per fit
    paths = {version: _step_checkpoint(run / version / "weights" / "lightning" / "last_step.ckpt", step)
             for version, step in (("v0", 100), ("v1", 200), ("v2", 300), ("v9", 1000), ("v10", 1100))}
    os.utime(paths["v10"], (0, 0))  # as after a copy that kept no times: the newest file looks the oldest
    (run / "latest").symlink_to(run / "v10", target_is_directory=True)  # anomalib's link to the last fit
    assert newest_step_checkpoint(train) == paths["v10"]

    # equal steps (a fit killed before its first checkpoint leaves none; one that saved has gone further): the
    # later fit, with versions compared as numbers
    tied = tmp_path / "tied"
    for version in ("v2", "v10"):
        _step_checkpoint(tied / version / "weights" / "last_step.ckpt", 300)
    assert newest_step_checkpoint(tied) == tied / "v10" / "weights" / "last_step.ckpt"


def test_results_file_is_replaced_whole_not_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / RESULTS
    first = merge_results(path, {"recipe": "paper"}, [{"step": 1, "image_AUROC": 0.5}])
    assert first == {"recipe": "paper", "rows": [{"step": 1, "image_AUROC": 0.5}]}
    with path.open() as reader:  # a reader (a plot, the other process) that opened the file before the next write
        merge_results(path, {"recipe": "paper"}, [{"step": 2, "image_AUROC": 0.6}])
        # it reads the whole old file: an in-place write truncates the file under it (empty or half-written JSON)
        assert json.loads(reader.read()) == first
    merge_results(path, {"recipe": "paper"}, [{"step": 1, "image_AUROC": 0.7}])  # a step evaluated again replaces
    assert json.loads(path.read_text())["rows"] == [{"step": 1, "image_AUROC": 0.7}, {"step": 2, "image_AUROC": 0.6}]
    assert sorted(item.name for item in tmp_path.iterdir()) == [f".{RESULTS}.lock", RESULTS]  # no temporary left


def _merge_steps(path: str, steps: range, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    for step in steps:
        merge_results(Path(path), {"recipe": "paper"}, [{"step": step, "image_AUROC": 0.5}])


def test_rows_merged_by_two_processes_at_once_all_survive(tmp_path: Path) -> None:
    """A training run and a train=False evaluation beside it: neither overwrites the rows the other added."""
    path = tmp_path / RESULTS
    context = multiprocessing.get_context("fork")  # POSIX, as the lock; the children touch no torch state
    start = context.Event()
    workers = [context.Process(target=_merge_steps, args=(str(path), range(first, 300, 2), start))
               for first in (0, 1)]
    for worker in workers:
        worker.start()
    start.set()  # both merge at once: without the lock, one's read-merge-write drops rows the other just wrote
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [row["step"] for row in json.loads(path.read_text())["rows"]] == list(range(300))
