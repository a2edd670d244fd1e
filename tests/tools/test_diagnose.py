"""tools/diagnose.py: a thin CLI over efficientad_plugin.diagnosis that writes report.html and summary.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


def test_folder_and_checkpoint_give_a_report(trained_checkpoint: tuple[Path, Path], tmp_path: Path,
                                             load_tool: Callable, capsys: pytest.CaptureFixture) -> None:
    category, checkpoint = trained_checkpoint
    folder = category / "test" / "good"  # two images, scored as normal ones: keeps the test short
    summary = load_tool("diagnose").main([str(folder), "--checkpoint", str(checkpoint), "--output", str(tmp_path),
                                          "--max-train-images", "1"])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2  # histogram, FP gallery
    assert summary["facts"]["Model"]["training"]["steps"] == 1
    assert summary["facts"]["Model"]["scores"]["train"]["images"] == 1
    printed = capsys.readouterr().out
    assert "[error] training budget" in printed and "report.html" in printed


def test_config_with_image_size(synthetic_root: Path, tmp_path: Path, load_tool: Callable) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "anomalib.data.MVTecAD", "init_args": {
        "root": str(synthetic_root), "category": "synthetic", "val_split_mode": "from_train"}}}))
    summary = load_tool("diagnose").main([str(config), "--image-size", "256", "512", "--output", str(tmp_path)])
    assert summary["facts"]["Data"]["image_size"] == [256, 512]
    assert summary["facts"]["Data"]["val_split_mode"] == "from_train"
    assert "resize distortion" in {finding["check"] for finding in summary["findings"]}  # square images, 1:2 model


def test_help_and_bad_image_size(load_tool: Callable, capsys: pytest.CaptureFixture) -> None:
    tool = load_tool("diagnose")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0 and "33x33" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(["folder", "--image-size", "256", "256", "256"])
