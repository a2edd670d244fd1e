"""EfficientAdPlugin is found by anomalib's model lookup and runs in ``anomalib benchmark``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from anomalib.cli import AnomalibCLI
from anomalib.models import get_model, list_models

from efficientad_plugin import EfficientAdPlugin


@pytest.mark.parametrize("name", ["EfficientAdPlugin", "efficient_ad_plugin"])
def test_get_model_by_name(name: str) -> None:
    model = get_model(name, teacher_weights="untrained", max_steps=7)
    assert type(model) is EfficientAdPlugin
    assert model.trainer_arguments["max_steps"] == 7


def test_listed_among_anomalib_models() -> None:
    assert "efficient_ad_plugin" in list_models()
    assert "EfficientAdPlugin" in list_models(case="pascal")


def test_benchmark_config_by_short_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synthetic_root: Path,
                                        teacher_file: Path, penalty_folder: Path) -> None:
    """anomalib benchmark exits 0 even when a job fails, so the results CSV is what is checked."""
    config = {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 42,
            "model": {
                "class_path": {"grid": ["EfficientAdPlugin"]},
                "init_args": {"teacher_weights": str(teacher_file), "penalty_dir": str(penalty_folder), "max_steps": 2},
            },
            "data": {
                "class_path": "MVTecAD",
                "init_args": {"root": str(synthetic_root), "category": "synthetic", "train_batch_size": 1,
                              "eval_batch_size": 4, "num_workers": 0, "val_split_mode": "from_train",
                              "val_split_ratio": 0.2, "seed": 0},
            },
        },
    }
    config_file = tmp_path / "benchmark.yaml"
    config_file.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    AnomalibCLI(["benchmark", "--config", str(config_file)])
    (results_csv,) = (tmp_path / "runs" / "benchmark").rglob("results.csv")
    rows = list(csv.DictReader(results_csv.open()))
    assert len(rows) == 1
    assert rows[0]["model.class_path"] == "EfficientAdPlugin"
    assert int(rows[0]["model.init_args.max_steps"]) == 2
    assert 0.0 <= float(rows[0]["image_AUROC"]) <= 1.0
    assert 0.0 <= float(rows[0]["pixel_AUROC"]) <= 1.0
