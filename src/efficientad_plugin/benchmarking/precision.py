"""Which inference precision may a line use? Score drift of bf16 and INT8 against f32, and speed, on normal images.

A user's own normal images are the right test: the threshold sits at the high end of their scores, so the drift
there is what can flip a label. Each setting (the f32 IR in bf16; the INT8 IR in f32 and bf16) scores the same
images as the f32 IR at ``INFERENCE_PRECISION_HINT`` f32; the largest absolute score change (scores normalised,
threshold 0.5) and the median latency at batch 1 are reported, side by side in one run. OpenVINO has no such check;
NNCF's accuracy control needs a metric and labelled data (``quantize_openvino(max_score_drift=...)`` uses the same
measure for quantisation).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_DRIFT = 0.02  # default tolerance: a score change of 2 % of the normalised range (threshold at 0.5)


def precision_settings(model: str | Path, int8_model: str | Path | None = None,
                       device: str = "CPU") -> list[tuple[str, Path, str]]:
    """(name, IR, precision hint) of every setting worth checking on ``device``: bf16 only where it is native."""
    from ..inference import native_bf16

    settings = [("f32", Path(model), "f32")]
    bf16 = native_bf16(device)
    if bf16:
        settings.append(("bf16", Path(model), "bf16"))
    if int8_model is not None:
        settings.append(("INT8", Path(int8_model), "f32"))
        if bf16:
            settings.append(("INT8 + bf16", Path(int8_model), "bf16"))
    return settings


def precision_check(model: str | Path, images: str | Path | Sequence[str | Path], int8_model: str | Path | None = None,
                    device: str = "CPU", max_images: int | None = 100, warmup: int = 3) -> list[dict[str, Any]]:
    """One row per setting: largest and mean score drift against f32, labels changed, median latency (ms).

    ``images`` are normal images (a folder, searched recursively, or a list); at most ``max_images`` of them, in
    sorted order. The f32 row is the reference (drift 0).
    """
    from ..images import read_rgb
    from ..inference import OpenVinoDetector, expand_inputs

    paths = expand_inputs([str(images)] if isinstance(images, str | Path) else [str(path) for path in images])
    paths = paths[:max_images] if max_images else paths  # expand_inputs names a folder without images
    pixels = [read_rgb(path).permute(1, 2, 0).numpy() for path in paths]  # [H, W, 3] as predict() takes them
    reference: np.ndarray | None = None
    reference_labels: list[bool | None] = []
    rows = []
    for name, ir, precision in precision_settings(model, int8_model, device):
        detector = OpenVinoDetector(ir, device=device, precision=precision)
        for image in pixels[:warmup]:
            detector.predict(image)
        scores, labels, seconds = [], [], []
        for image in pixels:
            start = time.perf_counter()
            prediction = detector.predict(image)
            seconds.append(time.perf_counter() - start)
            scores.append(prediction.score)
            labels.append(prediction.label)
        scores = np.asarray(scores, dtype=np.float64)
        if reference is None:
            reference, reference_labels = scores, labels
        drift = np.abs(scores - reference)
        rows.append({
            "setting": name, "model": str(ir), "precision": precision, "images": len(paths),
            "max_drift": float(drift.max()), "mean_drift": float(drift.mean()),
            "labels_changed": sum(a != b for a, b in zip(labels, reference_labels, strict=True)),
            "latency_ms": 1000 * statistics.median(seconds),
        })
    return rows


def fastest_within(rows: Sequence[dict[str, Any]], max_drift: float = MAX_DRIFT) -> dict[str, Any]:
    """The fastest row whose largest drift is at most ``max_drift`` (the f32 reference always qualifies)."""
    return min((row for row in rows if row["max_drift"] <= max_drift), key=lambda row: row["latency_ms"])


def markdown_table(rows: Sequence[dict[str, Any]], max_drift: float = MAX_DRIFT) -> str:
    """The rows as a Markdown table, with the speed-up over f32 and the setting chosen at ``max_drift``."""
    chosen = fastest_within(rows, max_drift)["setting"]
    reference = rows[0]["latency_ms"]
    lines = [f"| setting | largest score drift | mean drift | labels changed | latency (ms) | speed-up | "
             f"chosen at drift <= {max_drift:g} |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['max_drift']:.4f} | {row['mean_drift']:.4f} | "
                     f"{row['labels_changed']} / {row['images']} | {row['latency_ms']:.1f} | "
                     f"{reference / row['latency_ms']:.2f}x | {'yes' if row['setting'] == chosen else ''} |")
    return "\n".join(lines)
