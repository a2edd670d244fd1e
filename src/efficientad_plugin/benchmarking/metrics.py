"""The metrics every measurement tool reports: anomalib's evaluator with AU-PRO, and EfficientAdPlugin's extras.

One definition for the convergence curves, the benchmark and their reference runs, so that their columns match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO")
# EfficientAdPlugin's test also measures each branch alone and the paper's average (``branches.BranchMetrics``)...
BRANCH_METRICS = tuple(f"{branch}_{level}" for branch in ("local", "global", "paper")
                       for level in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"))
# ...and its fit what each network has learnt on normal validation images and the global map's weight.
LEARNING_METRICS = ("val_student_explained_variance", "val_autoencoder_explained_variance", "val_global_branch_weight")


def evaluator() -> object:
    """anomalib's Evaluator with the metrics of the curves (AU-PRO added to anomalib's defaults)."""
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

    return Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ])


def reported(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The known metrics among a test's (and a fit's or validation's) logged values, as floats, in report order."""
    return {name: float(metrics[name]) for name in (*METRICS, *BRANCH_METRICS, *LEARNING_METRICS) if name in metrics}
