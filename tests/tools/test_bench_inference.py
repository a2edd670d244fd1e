"""efficientad-bench-inference's variant expansion per precision and the ratios it prints (the measurements run as
the tool itself: minutes, not part of the suite)."""

from __future__ import annotations

import pytest

from efficientad_plugin.cli.bench_inference import ratios, with_precisions


def test_every_openvino_variant_runs_once_per_precision_and_the_others_once() -> None:
    variants = {"plugin OpenVINO FP32": ("openvino", "a.xml"), "plugin torch": ("torch", "plugin", "a.pt")}
    expanded = with_precisions(variants, ["f32", "bf16", "f32"])
    assert expanded == {"plugin OpenVINO FP32 [f32]": ("openvino", "a.xml", "f32"),
                        "plugin OpenVINO FP32 [bf16]": ("openvino", "a.xml", "bf16"),
                        "plugin torch": ("torch", "plugin", "a.pt")}


def test_ratios_compare_the_fastest_plugin_setting_with_stock_fp32_and_int8_with_int8() -> None:
    latency = {"stock EfficientAd OpenVINO FP32 [f32]": 400.0, "EfficientAdPlugin OpenVINO FP32 [f32]": 360.0,
               "EfficientAdPlugin OpenVINO INT8 [f32]": 100.0, "EfficientAdPlugin OpenVINO INT8 [bf16]": 80.0,
               "Patchcore tf_efficientnet_lite0 OpenVINO INT8 [bf16]": 40.0}
    found = ratios({name: {"latency_ms": value} for name, value in latency.items()})
    assert found["stock OpenVINO FP32 / plugin OpenVINO FP32 latency (target >= 1)"] == pytest.approx(400 / 360)
    assert found["stock OpenVINO FP32 / plugin OpenVINO INT8 latency (target >= 1.75)"] == 4.0
    assert found["stock OpenVINO FP32 / fastest plugin setting (EfficientAdPlugin OpenVINO INT8 [bf16]) latency"] == 5.0
    assert found["plugin INT8 / PatchCore-Lite0 INT8 latency [bf16]"] == 2.0
    assert "plugin INT8 / PatchCore-Lite0 INT8 latency [f32]" not in found  # not measured: not reported


def test_native_variants_run_per_precision_and_the_table_gives_milliseconds_per_megapixel() -> None:
    from efficientad_plugin.cli.bench_inference import table

    variants = {"EfficientAdPlugin native OpenVINO FP32 640x640": ("openvino_native", "n.xml", "640"),
                "EfficientAdPlugin native torch 640x640": ("torch_native", "n.pt", "640")}
    expanded = with_precisions(variants, ["f32", "bf16"])
    assert expanded["EfficientAdPlugin native OpenVINO FP32 640x640 [bf16]"] == ("openvino_native", "n.xml", "640",
                                                                               "bf16")
    assert expanded["EfficientAdPlugin native torch 640x640"] == ("torch_native", "n.pt", "640")
    row = {"latency_ms": 820.0, "throughput_fps": 1.0, "peak_memory_mib": 900.0, "megapixels": 0.4096}
    assert "| 2002 |" in table({"EfficientAdPlugin native torch 640x640": row})  # 820 ms / 0.4096 megapixels
