"""tools/benchmark.py runs anomalib benchmark configs, adds AU-PRO, speed and memory, and fails loudly."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_jobs_run_with_added_metrics_and_a_failed_job_fails_the_run(synthetic_root: Path, tmp_path: Path,
                                                                   load_tool: Callable) -> None:
    config = {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 0,
            "model": {"grid": [
                {"class_path": "Patchcore", "init_args": {"backbone": "resnet18", "pre_trained": False,
                                                          "layers": ["layer2", "layer3"]}},
                # fails in on_train_start: the penalty folder does not exist
                {"class_path": "EfficientAdPlugin", "init_args": {"teacher_weights": "untrained", "max_steps": 1,
                                                                  "penalty_dir": str(tmp_path / "missing")}},
            ]},
            "data": {"class_path": "MVTecAD", "init_args": {
                "root": str(synthetic_root), "category": "synthetic", "train_batch_size": 1, "eval_batch_size": 4,
                "num_workers": 0, "val_split_mode": "from_train", "val_split_ratio": 0.2, "seed": 0}},
        },
    }
    config_file = tmp_path / "bench.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output = tmp_path / "out"
    assert load_tool("benchmark").main(["--config", str(config_file), "--output", str(output)]) == 1
    rows = list(csv.DictReader((output / "results.csv").open()))
    assert [row["model"] for row in rows] == ["Patchcore", "EfficientAdPlugin"]
    patchcore, plugin = rows
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score", "pixel_F1Score"):
        assert 0.0 <= float(patchcore[name]) <= 1.0, name
    assert float(patchcore["latency_ms"]) > 0
    assert float(patchcore["throughput_fps"]) > 0
    assert float(patchcore["peak_memory_mib"]) > 100
    assert float(patchcore["fit_seconds"]) > 0
    assert not patchcore["error"]
    assert "missing" in plugin["error"]
    assert Path(plugin["log"]).is_file()
    assert "| Patchcore |" in (output / "results.md").read_text()
    assert (output / "results.png").stat().st_size > 0
