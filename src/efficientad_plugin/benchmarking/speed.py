"""Timing and memory measurements shared by the benchmark tools (tools/bench_inference.py, tools/benchmark.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def peak_memory_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB; NaN where /proc is missing."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def latency_ms(run: Callable[[], object], warmup: int, runs: int) -> dict[str, float]:
    """Median and 95th percentile wall time of ``run`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"latency_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))]}


def measure_openvino(xml: str | Path, size: tuple[int, int], warmup: int, runs: int,
                     images: int, precision: str = "f32") -> dict[str, float]:
    """Latency (synchronous, LATENCY hint) and throughput (AsyncInferQueue, THROUGHPUT hint) at batch 1.

    ``precision`` is the ``INFERENCE_PRECISION_HINT``: f32 by default, since OpenVINO would otherwise run bf16 on
    CPUs with bf16 support and a benchmark would not compare true f32.
    """
    import openvino as ov

    core = ov.Core()
    image = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    hint = {"INFERENCE_PRECISION_HINT": precision}
    request = core.compile_model(str(xml), "CPU", {**hint, "PERFORMANCE_HINT": "LATENCY"})
    request = request.create_infer_request()
    result = latency_ms(lambda: request.infer(image), warmup, runs)
    compiled = core.compile_model(str(xml), "CPU", {**hint, "PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    for _ in range(len(queue)):  # warm every request
        queue.start_async(image)
    queue.wait_all()
    start = time.perf_counter()
    for _ in range(images):
        queue.start_async(image)
    queue.wait_all()
    return {**result, "throughput_fps": images / (time.perf_counter() - start)}


def export_openvino_batch1(model: object, size: tuple[int, int], xml: str | Path) -> Path:
    """Export an anomalib model as anomalib does (ONNX, then OpenVINO, pre/post-processing inside) at batch 1.

    anomalib 2.7 traces with an example batch of 2, which PatchCore's graph keeps as a fixed batch size.
    """
    import openvino as ov
    import torch

    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    onnx = xml.with_suffix(".onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, *size),), str(onnx), input_names=["input"], dynamo=True)
    ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
    return xml
