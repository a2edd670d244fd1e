"""tools/quantize.py: quantises with accuracy control and lists the convolutions left in floating point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def test_quantize_with_max_drift_reports_float_convolutions(tiny_openvino_export: Path, noise_images: Path,
                                                             tmp_path: Path, load_tool: Callable,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "int8" / "model.xml"
    results = load_tool("quantize").main([str(tiny_openvino_export), "--calibration", str(noise_images),
                                          "--output", str(output), "--max-drift", "0.5"])
    assert output.is_file()
    assert results["float_convolutions"] == {}  # so loose a bound keeps every convolution INT8
    assert "Convolutions in floating point: 0" in capsys.readouterr().out


def test_validation_without_max_drift_is_refused(tiny_openvino_export: Path, noise_images: Path, tmp_path: Path,
                                                 load_tool: Callable) -> None:
    with pytest.raises(ValueError, match="set max_score_drift"):
        load_tool("quantize").main([str(tiny_openvino_export), "--calibration", str(noise_images),
                                    "--output", str(tmp_path / "model.xml"), "--validation", str(noise_images)])
