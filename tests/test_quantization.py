"""Tests for efficientad_plugin.quantization on a tiny stand-in for an export (seconds, not an EfficientAD model).

Quantising a real export end to end is tested on PCB images in tests/integration/test_export.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from efficientad_plugin.images import read_rgb
from efficientad_plugin.quantization import HOLD_OUT_EVERY, float_convolutions, quantize_openvino


def _largest_drift(int8: Path, fp32: Path, paths: list[Path]) -> float:
    scores = []
    for model in (fp32, int8):
        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        scores.append(np.array([compiled(read_rgb(path).numpy()[None])[0].item() for path in paths]))
    return float(np.abs(scores[1] - scores[0]).max())


def test_accuracy_control_bounds_the_drift_on_held_out_images(tiny_openvino_export: Path, noise_images: Path,
                                                              tmp_path: Path) -> None:
    held_out = sorted(noise_images.glob("*.png"))[::HOLD_OUT_EVERY]
    plain = quantize_openvino(tiny_openvino_export, noise_images, tmp_path / "plain" / "model.xml")
    assert float_convolutions(plain) == {}  # every convolution INT8
    plain_drift = _largest_drift(plain, tiny_openvino_export, held_out)
    assert plain_drift > 0
    bound = plain_drift / 4  # plain INT8 misses it: some layers must go back to float
    controlled = quantize_openvino(tiny_openvino_export, noise_images, tmp_path / "controlled" / "model.xml",
                                   max_score_drift=bound)
    assert _largest_drift(controlled, tiny_openvino_export, held_out) <= bound
    reverted = float_convolutions(controlled)
    assert reverted
    assert all(len(shape) == 4 for shape in reverted.values())  # [out, in, kh, kw]


def test_accuracy_control_with_separate_validation_images(tiny_openvino_export: Path, noise_images: Path,
                                                          tmp_path: Path) -> None:
    paths = sorted(noise_images.glob("*.png"))
    controlled = quantize_openvino(tiny_openvino_export, paths[:5], tmp_path / "model.xml", max_score_drift=0.5,
                                   validation_images=paths[5:])
    assert _largest_drift(controlled, tiny_openvino_export, paths[5:]) <= 0.5
    assert float_convolutions(controlled) == {}  # a loose bound keeps everything INT8


@pytest.mark.parametrize(("arguments", "message"), [
    ({"max_score_drift": 0.0}, "between 0 and 1"),
    ({"max_score_drift": 1.0}, "between 0 and 1"),
    ({"max_score_drift": float("nan")}, "between 0 and 1"),
    ({"validation_images": "calibration"}, "set max_score_drift"),
    ({"max_score_drift": 0.1, "validation_images": "calibration"}, "also calibration images"),
    ({"max_score_drift": 0.1, "calibration_images": "one image"}, "at least 2 calibration images"),
])
def test_bad_arguments_are_named(tiny_openvino_export: Path, noise_images: Path, tmp_path: Path,
                                 arguments: dict[str, object], message: str) -> None:
    paths = sorted(noise_images.glob("*.png"))
    named = {"calibration": paths[2:4], "one image": paths[:1]}
    arguments = {name: named.get(value, value) if isinstance(value, str) else value
                 for name, value in arguments.items()}
    arguments.setdefault("calibration_images", paths)
    with pytest.raises(ValueError, match=message):
        quantize_openvino(tiny_openvino_export, output=tmp_path / "model.xml", **arguments)
    assert not (tmp_path / "model.xml").exists()
