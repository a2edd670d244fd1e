"""Do the thresholds hold on parts they never saw? Observed false alarms on normal test images, per threshold.

For each threshold setting (false-alarm rates, and anomalib's default ``PostProcessor`` beside them) the model is
validated (thresholds fitted on the normal validation images, as at the end of training) and run over the test
split through the real post-processing; the labels it gives are counted. The interval that sample sizes allow
around the target is exact: a threshold at the r-th smallest of n normal validation scores lets a share
Beta(n - r + 1, r) of normal parts through, so the false alarms among m normal test images follow the
beta-binomial (m, n - r + 1, r). anomalib has no such check; it reports F1 and AUROC, which need defects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..post_processing import CONFIDENCE, FalseAlarmRatePostProcessor, threshold_rank


def observed_rate_interval(validation_images: int, test_images: int, rank: int,
                           confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Central ``confidence`` interval of the false-alarm share among ``test_images`` normal test images.

    The threshold is the ``rank``-th smallest (1-based) of ``validation_images`` normal validation scores.
    """
    from scipy.stats import betabinom

    distribution = betabinom(test_images, validation_images - rank + 1, rank)
    tail = (1 - confidence) / 2
    return float(distribution.ppf(tail)) / test_images, float(distribution.ppf(1 - tail)) / test_images


def _count(predictions: Sequence[Any]) -> dict[str, int | float]:  # noqa: ANN401
    labels = torch.cat([batch.gt_label.flatten().cpu() for batch in predictions]).bool()
    flagged = torch.cat([batch.pred_label.flatten().cpu() for batch in predictions]).bool()
    counts: dict[str, int | float] = {
        "test_normal_images": int((~labels).sum()),
        "false_alarms": int((flagged & ~labels).sum()),
        "test_defective_images": int(labels.sum()),
        "defects_found": int((flagged & labels).sum()),
    }
    masks = [batch.pred_mask.cpu()[~batch.gt_label.cpu().bool()] for batch in predictions
             if batch.pred_mask is not None]
    if masks:
        normal_pixels = torch.cat([mask.flatten() for mask in masks])
        counts["pixel_false_alarm_rate"] = float(normal_pixels.float().mean()) if normal_pixels.numel() else math.nan
    return counts


def false_alarm_check(model: Any, datamodule: Any, rates: Sequence[float] = (0.01, 0.05),  # noqa: ANN401
                      ckpt_path: str | Path | None = None, workdir: str | Path = "results/false_alarms",
                      accelerator: str = "auto") -> list[dict[str, Any]]:
    """One row per threshold setting: the fitted threshold, false alarms on normal test images, defect recall.

    ``model`` is a trained model (or the class whose weights ``ckpt_path`` holds); its post-processor is replaced
    by a ``FalseAlarmRatePostProcessor`` for each of ``rates`` and then by anomalib's default ``PostProcessor``
    (F1-adaptive, which without defective validation images takes the highest normal validation score).
    """
    from anomalib.engine import Engine
    from anomalib.post_processing import PostProcessor

    settings: list[tuple[str, float | None, Any]] = [
        (f"false-alarm rate {100 * rate:g} %", rate, FalseAlarmRatePostProcessor(false_alarm_rate=rate))
        for rate in rates]
    settings.append(("anomalib default (F1-adaptive)", None, PostProcessor()))

    def engine() -> Engine:
        # one per setting: a trainer keeps the callbacks of earlier runs, so an old post-processor would run too
        return Engine(default_root_dir=Path(workdir), logger=False, enable_progress_bar=False, devices=1,
                      accelerator=accelerator)

    model.visualizer = None  # counting labels needs no pictures (anomalib would draw every test image per setting)
    if ckpt_path is not None:
        # load once, before the settings: a checkpoint also restores its post-processor's configuration (rate)
        engine().validate(model, datamodule, ckpt_path=ckpt_path)
    rows = []
    for name, rate, post_processor in settings:
        model.post_processor = post_processor
        run = engine()
        run.validate(model, datamodule)  # refits the thresholds of this setting on the same weights
        validation_normals = _validation_normal_images(model, datamodule)
        predictions = run.predict(model, dataloaders=datamodule.test_dataloader())
        counts = _count(predictions)
        # F1-adaptive on normal images alone falls back to their maximum: rank n
        rank = validation_normals if rate is None else threshold_rank(validation_normals, rate)
        low, high = observed_rate_interval(validation_normals, counts["test_normal_images"], rank)
        observed = counts["false_alarms"] / counts["test_normal_images"]
        rows.append({
            "threshold": name, "target_rate": rate, "validation_normal_images": validation_normals,
            "image_threshold": float(post_processor.image_threshold), **counts,
            "observed_false_alarm_rate": observed, "expected_interval": [low, high],
            "inside_interval": low <= observed <= high,
            "defect_recall": counts["defects_found"] / max(1, counts["test_defective_images"]),
        })
    return rows


def _validation_normal_images(model: Any, datamodule: Any) -> int:  # noqa: ANN401
    report = getattr(model.post_processor, "threshold_report", None)
    if report and report.get("normal_images"):
        return int(report["normal_images"])
    return int((datamodule.val_data.samples.label_index == 0).sum())


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (rates in %)."""
    lines = ["| threshold | validation normals | false alarms on test/good | observed rate | 95 % interval "
             "| inside | defect recall | normal pixels flagged |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    for row in rows:
        low, high = row["expected_interval"]
        pixels = row.get("pixel_false_alarm_rate")
        lines.append(
            f"| {row['threshold']} | {row['validation_normal_images']} | {row['false_alarms']} / "
            f"{row['test_normal_images']} | {100 * row['observed_false_alarm_rate']:.1f} % | "
            f"[{100 * low:.1f} %, {100 * high:.1f} %] | {'yes' if row['inside_interval'] else 'no'} | "
            f"{100 * row['defect_recall']:.1f} % | {'–' if pixels is None else f'{100 * pixels:.2f} %'} |")
    return "\n".join(lines)
