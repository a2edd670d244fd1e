"""Thresholds from normal images only, at a false-alarm rate the user chooses.

anomalib's F1-adaptive threshold needs defective validation images; without them it falls back to the highest
normal validation score, so the false-alarm rate is whatever the number of validation images makes it (about
1/(n+1)), and nobody is told. Here the image threshold is the ``1 - false_alarm_rate`` quantile of the normal
validation scores and the pixel threshold the same quantile of the normal validation pixels. Everything else is
anomalib's ``PostProcessor``: min-max normalisation with the threshold at 0.5, labels and masks, and the export,
whose graph holds the thresholds.

anomalib also clamps the normalised scores to [0, 1], so every part scoring more than half the normal range above
the threshold reads 1.0 and every part as far below it reads 0.0: the order among them (which part to inspect first,
and what AUROC measures) is lost, and a normal part far above the range ties with every defect (or a defect far
below it with the normal parts). With ``keep_order`` (the default) the scores beyond ``[1 - KNEE, KNEE]`` approach 0
and 1 along smooth, strictly increasing tails instead; inside it, the threshold at 0.5 and every label stay
anomalib's. anomalib has no such option; this is the one place that adds it.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

logger = logging.getLogger(__name__)

THRESHOLD_MODES = ("auto", "false_alarm_rate", "f1")
CONFIDENCE = 0.95
MAX_PIXELS = 1 << 24  # normal validation pixels kept for the pixel quantile (evenly strided beyond this)
KNEE = 0.75  # normalised scores in [1 - KNEE, KNEE] are anomalib's; beyond, the order-keeping tails


def ordered_tails(linear: torch.Tensor, knee: float = KNEE) -> torch.Tensor:
    """``v`` on ``[1 - k, k]``; above, ``1 - (1 - k)^2 / (1 - 2k + v)``, below, its mirror ``(1 - k)^2 / (2 - 2k - v)``:
    continuous with slope 1 at the knees, strictly increasing, inside (0, 1) for every finite ``v`` (distinct in
    float32 up to ``|v|`` of about 1,000), 0 and 1 at the infinities."""
    square = (1 - knee) ** 2
    upper = 1 - square / (1 - 2 * knee + linear.clamp(min=knee))
    lower = square / (2 - 2 * knee - linear.clamp(max=1 - knee))
    return torch.where(linear > knee, upper, torch.where(linear < 1 - knee, lower, linear))


def false_alarm_interval(num_normal: int, rate: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The interval in which the true false-alarm rate of a threshold at the ``1 - rate`` order statistic lies.

    With the threshold at the r-th smallest of n normal scores, the share of normal parts scoring above it follows
    Beta(n - r + 1, r) whatever the score distribution (order statistics of a continuous variable); this returns its
    central ``confidence`` interval.
    """
    from scipy.stats import beta

    rank = threshold_rank(num_normal, rate)
    tail = (1 - confidence) / 2
    distribution = beta(num_normal - rank + 1, rank)
    return float(distribution.ppf(tail)), float(distribution.ppf(1 - tail))


def images_needed(rate: float) -> int:
    """Normal validation images for at least three above a ``rate`` threshold, so the quantile is not the maximum."""
    return math.ceil(3 / float(f"{rate:.6g}"))  # a rate read back from a float32 buffer is 0.0099999998


def threshold_rank(num_normal: int, rate: float) -> int:
    """1-based rank of the order statistic used as threshold: at most ``rate`` of the n scores lie above it."""
    return min(num_normal, max(1, math.ceil(num_normal * (1 - rate))))


def _order_statistic(values: torch.Tensor, rate: float) -> torch.Tensor:
    values = values.flatten().float()
    return torch.kthvalue(values.cpu(), threshold_rank(values.numel(), rate)).values


class FalseAlarmRatePostProcessor(PostProcessor):
    """anomalib's ``PostProcessor`` whose thresholds can come from normal validation images alone.

    Args:
        false_alarm_rate: share of normal parts (and of normal pixels) that may score above the threshold, in
            (0, 1); 0.01 by default.
        threshold: ``"auto"`` uses the false-alarm rate when the validation split has no defective image and
            anomalib's F1-adaptive threshold when it has both kinds; ``"false_alarm_rate"`` or ``"f1"`` force one.
        keep_order: normalised scores beyond ``[1 - KNEE, KNEE]`` follow ``ordered_tails`` instead of anomalib's clamp
            to [0, 1], so parts far outside the normal range keep their order (labels unchanged); ``False`` is
            anomalib's normalisation exactly. Stored in the checkpoint; one saved before this option takes the
            argument's.
        **kwargs: anomalib ``PostProcessor`` arguments (normalisation, sensitivity...).

    After validation, ``threshold_report`` holds the mode used, the thresholds, the number of normal images and
    pixels behind them and the 95 % interval of the false-alarm rate they imply; it is logged, and the numbers are
    buffers, so the checkpoint keeps them.
    """

    def __init__(self, false_alarm_rate: float = 0.01, threshold: str = "auto", keep_order: bool = True,
                 **kwargs: Any) -> None:  # noqa: ANN401
        if not 0 < false_alarm_rate < 1:
            msg = f"false_alarm_rate must be in (0, 1), e.g. 0.01 for 1 %; got {false_alarm_rate}."
            raise ValueError(msg)
        if threshold not in THRESHOLD_MODES:
            msg = f"threshold must be one of {', '.join(THRESHOLD_MODES)}; got {threshold!r}."
            raise ValueError(msg)
        super().__init__(**kwargs)
        self.false_alarm_rate = false_alarm_rate
        self.threshold = threshold
        self.keep_order = keep_order
        self._normal_scores: list[torch.Tensor] = []
        self._normal_pixels: list[torch.Tensor] = []
        self._saw_defects = False
        # what the fitted thresholds rest on (NaN: not fitted from normal images), kept in the state dict
        self.register_buffer("fitted_false_alarm_rate", torch.tensor(float("nan")))
        self.register_buffer("normal_images", torch.tensor(0))
        self.register_buffer("false_alarm_interval", torch.full((2,), float("nan")))

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "false_alarm_rate", "threshold", "keep_order")

    def _normalize(self, preds: torch.Tensor | None, norm_min: torch.Tensor, norm_max: torch.Tensor,
                   threshold: torch.Tensor) -> torch.Tensor | None:
        """anomalib's min-max normalisation; with ``keep_order``, its clamp to [0, 1] becomes ``ordered_tails``."""
        normalised = super()._normalize(preds, norm_min, norm_max, threshold)
        if preds is None or not self.keep_order:
            return normalised
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        linear = (preds - threshold) / (norm_max - norm_min) + 0.5  # +-inf where the range is 0: tails give 1, 0
        fitted = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        beyond = (normalised > KNEE) | (normalised < 1 - KNEE)
        return torch.where(fitted & beyond, ordered_tails(linear), normalised)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start collecting the normal validation scores and pixels of this validation."""
        del trainer, pl_module
        self._normal_scores, self._normal_pixels, self._saw_defects = [], [], False

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any,
                                **kwargs: Any) -> None:  # noqa: ANN401
        """anomalib's updates (F1 threshold, min-max), and the normal images' scores and map pixels."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        labels = outputs.gt_label
        normal = (torch.ones(len(outputs.pred_score), dtype=torch.bool) if labels is None
                  else labels.detach().cpu().flatten() == 0)
        self._saw_defects |= bool((~normal).any())
        if outputs.pred_score is not None:
            self._normal_scores.append(outputs.pred_score.detach().cpu().flatten()[normal])
        if outputs.anomaly_map is not None:
            self._normal_pixels.append(outputs.anomaly_map.detach().cpu()[normal].flatten())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """F1-adaptive (anomalib) or false-alarm-rate thresholds, and the report of what they rest on."""
        use_rate = self.threshold == "false_alarm_rate" or (self.threshold == "auto" and not self._saw_defects)
        scores = torch.cat(self._normal_scores) if self._normal_scores else torch.empty(0)
        if not (self.enable_thresholding and use_rate and len(scores)):
            super().on_validation_epoch_end(trainer, pl_module)
            self.fitted_false_alarm_rate.fill_(float("nan"))
            return
        # anomalib's min-max only: its F1 threshold would warn about the missing defects and fall back to the maximum
        self.enable_thresholding = False
        try:
            super().on_validation_epoch_end(trainer, pl_module)
        finally:
            self.enable_thresholding = True
        self._image_threshold_metric.reset()
        self._pixel_threshold_metric.reset()
        self._image_threshold.copy_(_order_statistic(scores, self.false_alarm_rate))
        if self._normal_pixels:
            pixels = torch.cat(self._normal_pixels)
            stride = max(1, math.ceil(pixels.numel() / MAX_PIXELS))
            self._pixel_threshold.copy_(_order_statistic(pixels[::stride], self.false_alarm_rate))
        self.fitted_false_alarm_rate.fill_(self.false_alarm_rate)
        self.normal_images.fill_(len(scores))
        self.false_alarm_interval.copy_(torch.tensor(false_alarm_interval(len(scores), self.false_alarm_rate)))
        self._normal_scores, self._normal_pixels = [], []
        report = self.threshold_report
        logger.info("Thresholds for a %.2g %% false-alarm rate from %d normal validation images: image %.6g, pixel "
                    "%.6g; the true rate lies in [%.2g %%, %.2g %%] (95 %%).", 100 * self.false_alarm_rate,
                    report["normal_images"], report["image_threshold"], report["pixel_threshold"],
                    100 * report["false_alarm_interval"][0], 100 * report["false_alarm_interval"][1])
        if len(scores) < images_needed(self.false_alarm_rate):
            warnings.warn(
                f"A {100 * self.false_alarm_rate:.2g} % false-alarm rate cannot be set from {len(scores)} normal "
                f"validation images: the threshold is then (close to) their highest score, and the true rate lies "
                f"anywhere in [{100 * report['false_alarm_interval'][0]:.2g} %, "
                f"{100 * report['false_alarm_interval'][1]:.2g} %]. It needs at least "
                f"{images_needed(self.false_alarm_rate)} normal validation images (raise val_split_ratio or add "
                f"normal images), or choose a higher false_alarm_rate.", stacklevel=2)

    @property
    def threshold_report(self) -> dict[str, Any]:
        """The thresholds in force and, when they come from normal images, what they rest on."""
        fitted = not bool(torch.isnan(self.fitted_false_alarm_rate))
        return {
            "mode": "false_alarm_rate" if fitted else "f1_adaptive",
            "image_threshold": float(self.image_threshold),
            "pixel_threshold": float(self.pixel_threshold),
            "false_alarm_rate": float(self.fitted_false_alarm_rate) if fitted else None,
            "normal_images": int(self.normal_images) if fitted else None,
            "false_alarm_interval": [float(value) for value in self.false_alarm_interval] if fitted else None,
            "confidence": CONFIDENCE,
        }
