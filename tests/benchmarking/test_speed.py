"""Tests for efficientad_plugin.benchmarking.speed: timing helpers and PatchCore's export at batch 1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import openvino as ov
import torch

from efficientad_plugin.benchmarking.speed import export_openvino_batch1, latency_ms, measure_openvino


def test_latency_statistics_time_the_calls_after_warmup() -> None:
    calls = []

    def run() -> None:
        calls.append(None)
        time.sleep(0.002 if len(calls) > 2 else 0.05)  # slow warm-up calls must not count

    result = latency_ms(run, warmup=2, runs=5)
    assert len(calls) == 7
    assert 2 <= result["latency_ms"] <= result["p95_ms"] < 40


def test_peak_memory_grows_with_an_allocation() -> None:
    """In a fresh process: in this one the high-water mark may already be far above any new allocation."""
    script = (
        "from efficientad_plugin.benchmarking.speed import peak_memory_mib\n"
        "before = peak_memory_mib()\n"
        "block = bytearray(256 * 1024 * 1024)\n"
        "block[::4096] = bytes(len(block[::4096]))\n"
        "print(peak_memory_mib() - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert float(result.stdout.strip().splitlines()[-1]) >= 250


def test_patchcore_exports_and_runs_at_batch_one(tmp_path: Path) -> None:
    """anomalib exports PatchCore with a batch of 2 fixed in the graph; this export takes one image."""
    from anomalib.models import Patchcore

    patchcore = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False).eval()
    with torch.no_grad():
        channels = sum(f.shape[1] for f in patchcore.model.feature_extractor(torch.zeros(1, 3, 64, 64)).values())
    patchcore.model.memory_bank = torch.randn(100, channels)
    xml = export_openvino_batch1(patchcore, (64, 64), tmp_path / "patchcore" / "model.xml")
    assert list(ov.Core().read_model(str(xml)).inputs[0].get_partial_shape().to_shape()) == [1, 3, 64, 64]
    result = measure_openvino(xml, (64, 64), warmup=1, runs=3, images=4)
    assert 0 < result["latency_ms"] <= result["p95_ms"]
    assert result["throughput_fps"] > 0
