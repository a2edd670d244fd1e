"""The false-alarm check: thresholds refitted per setting, false alarms on normal test images, exact intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.benchmarking.false_alarms import false_alarm_check, markdown_table, observed_rate_interval
from efficientad_plugin.cli.false_alarms import main


def test_the_interval_matches_a_simulation_of_thresholds_on_fresh_normal_scores() -> None:
    validation, test, rank = 100, 50, 95  # a 5 % threshold from 100 normal images, checked on 50 more
    rng = np.random.default_rng(0)
    scores = rng.random((20_000, validation + test))  # any continuous score distribution gives the same counts
    thresholds = np.sort(scores[:, :validation], axis=1)[:, rank - 1]
    rates = (scores[:, validation:] > thresholds[:, None]).mean(axis=1)
    low, high = observed_rate_interval(validation, test, rank)
    assert abs(np.quantile(rates, 0.025) - low) <= 1 / test
    assert abs(np.quantile(rates, 0.975) - high) <= 1 / test
    assert 0.94 <= np.mean((rates >= low) & (rates <= high)) <= 0.995


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="synthetic", train_batch_size=1, eval_batch_size=4, num_workers=0,
                   val_split_mode="from_train", val_split_ratio=0.5, seed=0)


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, teacher_file: Path, penalty_folder: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    model = EfficientAdPlugin(teacher_weights=str(teacher_file), penalty_dir=str(penalty_folder), max_steps=2)
    engine = Engine(default_root_dir=folder, logger=False, accelerator="cpu", devices=1)
    engine.fit(model, _datamodule(synthetic_root))
    engine.trainer.save_checkpoint(folder / "model.ckpt")
    return folder / "model.ckpt"


def _raw_scores(model: EfficientAdPlugin, dataset: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores straight from the torch model (the synthetic images are already 256 x 256), and the labels."""
    model.model.eval()
    with torch.no_grad():
        items = [dataset[index] for index in range(len(dataset))]
        scores = torch.cat([model.model(item.image[None]).pred_score.flatten() for item in items])
    return scores, torch.tensor([int(item.gt_label) for item in items])


def test_thresholds_and_false_alarms_match_the_order_statistics_of_raw_scores(
        trained: Path, synthetic_root: Path, teacher_file: Path, penalty_folder: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights=str(teacher_file), penalty_dir=str(penalty_folder))
    datamodule = _datamodule(synthetic_root)
    rows = false_alarm_check(model, datamodule, rates=[0.2], ckpt_path=trained, workdir=tmp_path, accelerator="cpu")
    rate_row, default_row = rows
    assert rate_row["threshold"] == "false-alarm rate 20 %" and default_row["threshold"].startswith("anomalib")

    validation, _ = _raw_scores(model, datamodule.val_data)
    test, labels = _raw_scores(model, datamodule.test_data)
    assert rate_row["validation_normal_images"] == default_row["validation_normal_images"] == len(validation) == 5
    ordered = validation.sort().values
    assert rate_row["image_threshold"] == pytest.approx(float(ordered[3]), rel=1e-5)  # ceil(5 * 0.8) = 4th
    assert default_row["image_threshold"] == pytest.approx(float(ordered[-1]), rel=1e-5)  # anomalib: the maximum
    for row in rows:
        assert row["test_normal_images"] == int((labels == 0).sum()) == 4
        assert row["false_alarms"] == int((test[labels == 0] > row["image_threshold"]).sum())
        assert row["defects_found"] == int((test[labels == 1] > row["image_threshold"]).sum())
        low, high = row["expected_interval"]
        assert row["inside_interval"] == (low <= row["observed_false_alarm_rate"] <= high)
        assert 0 <= row["pixel_false_alarm_rate"] <= 1
    assert "| false-alarm rate 20 % | 5 |" in markdown_table(rows)
    assert not [path for path in tmp_path.rglob("*") if path.suffix in {".png", ".jpg"}]  # no visualisations


def test_the_command_writes_the_table_and_names_a_missing_checkpoint(trained: Path, synthetic_root: Path,
                                                                     teacher_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "EfficientAdPlugin", "init_args": {"teacher_weights": str(teacher_file)}},
        "data": {"class_path": "MVTecAD", "init_args": {
            "root": str(synthetic_root), "category": "synthetic", "num_workers": 0, "val_split_mode": "from_train",
            "val_split_ratio": 0.5, "seed": 0}}}))
    arguments = ["--config", str(config), "--rates", "[0.2]", "--accelerator", "cpu"]
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        main([*arguments, "--ckpt_path", str(tmp_path / "absent.ckpt"), "--output", str(tmp_path)])
    rows = main([*arguments, "--ckpt_path", str(trained), "--output", str(tmp_path / "out")])
    assert len(rows) == 2
    assert "false-alarm rate 20 %" in (tmp_path / "out" / "table.md").read_text()
