"""The precision check: drift of bf16 and INT8 against f32 on normal images, the fastest setting within a bound."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openvino as ov
import pytest

from efficientad_plugin.benchmarking.precision import fastest_within, markdown_table, precision_check
from efficientad_plugin.hardware import cpu_has_native_bf16
from efficientad_plugin.inference import OpenVinoDetector, native_bf16, resolve_precision
from efficientad_plugin.quantization import quantize_openvino

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_openvino_and_torch_agree_on_native_bf16_and_auto_follows_it(tiny_openvino_export: Path) -> None:
    """Two routes to the same hardware fact (OpenVINO's capabilities, torch's cpuinfo); auto compiles with it."""
    assert native_bf16() == cpu_has_native_bf16()
    expected = "bf16" if native_bf16() else "f32"
    assert resolve_precision("auto") == expected and resolve_precision("f16") == "f16"
    detector = OpenVinoDetector(tiny_openvino_export, precision="auto")
    assert detector.precision == expected
    compiled_with = detector.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert compiled_with == (ov.Type.bf16 if expected == "bf16" else ov.Type.f32)


def test_check_measures_drift_against_f32_and_picks_the_fastest_within_the_bound(
        tiny_openvino_export: Path, noise_images: Path, tmp_path: Path) -> None:
    int8 = quantize_openvino(tiny_openvino_export, noise_images, tmp_path / "int8" / "model.xml")
    rows = precision_check(tiny_openvino_export, noise_images, int8, warmup=1)
    names = [row["setting"] for row in rows]
    assert names == (["f32", "bf16", "INT8", "INT8 + bf16"] if native_bf16() else ["f32", "INT8"])
    assert rows[0]["max_drift"] == 0 and all(row["images"] == 8 for row in rows)
    by_name = {row["setting"]: row for row in rows}
    # the drift is the score change of that setting, image by image, against the f32 model
    fp32, quantized = OpenVinoDetector(tiny_openvino_export), OpenVinoDetector(int8)
    images = sorted(noise_images.glob("*.png"))
    from efficientad_plugin.images import read_rgb

    changes = [abs(quantized.predict(read_rgb(path).permute(1, 2, 0).numpy()).score
                   - fp32.predict(read_rgb(path).permute(1, 2, 0).numpy()).score) for path in images]
    assert by_name["INT8"]["max_drift"] == pytest.approx(max(changes), abs=1e-6) and max(changes) > 0
    assert fastest_within(rows, max_drift=0)["setting"] == "f32"  # only the reference has no drift
    loose = fastest_within(rows, max_drift=1.0)
    assert loose["latency_ms"] == min(row["latency_ms"] for row in rows)
    table = markdown_table(rows, max_drift=1.0)
    assert table.count("| yes |") == 1 and f"| {loose['setting']} |" in table


def test_check_names_an_empty_folder(tiny_openvino_export: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.* holds no images"):
        precision_check(tiny_openvino_export, tmp_path)


def test_infer_auto_after_the_check_scores_with_the_chosen_setting(
        tiny_openvino_export: Path, noise_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("infer_tool", REPO_ROOT / "tools" / "infer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    int8 = quantize_openvino(tiny_openvino_export, noise_images, tmp_path / "int8" / "model.xml")
    arguments = [str(tiny_openvino_export), str(noise_images), "--output", str(tmp_path / "rows.csv"),
                 "--precision", "auto", "--check-drift", str(noise_images), "--int8-model", str(int8)]
    assert tool.main([*arguments, "--max-drift", "0"]) == 0
    out = capsys.readouterr().out
    assert "| f32 | 0.0000 |" in out and f"scoring with {tiny_openvino_export} at precision f32" in out
    assert tool.main([*arguments, "--max-drift", "1"]) == 0
    out = capsys.readouterr().out
    chosen = next(line for line in out.splitlines() if line.endswith("| yes |")).split("|")[1].strip()
    model = int8 if chosen.startswith("INT8") else tiny_openvino_export
    precision = "bf16" if chosen.endswith("bf16") else "f32"
    assert f"scoring with {model} at precision {precision}" in out
    with pytest.raises(SystemExit):  # an INT8 model alone is not checked against anything
        tool.main([str(tiny_openvino_export), str(noise_images), "--output", str(tmp_path / "r.csv"),
                   "--int8-model", str(int8)])
