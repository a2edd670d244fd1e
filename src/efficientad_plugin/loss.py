"""EfficientAD's training losses (paper §3.2-3.3, Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .torch_model import TrainingFeatures

HARD_QUANTILE = 0.999


def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean of the squared differences at or above their ``quantile`` (paper Eq. 1, p_hard = 0.999).

    Exact and deterministic, ties included: the linear-interpolation quantile of n sorted values lies in
    (s[ceil(p) - 1], s[ceil(p)]] with p = (n - 1) * quantile, so "at or above the quantile" means ">= s[ceil(p)]",
    the smallest of the n - ceil(p) largest values, which a top-k finds without sorting everything.
    """
    distance = (teacher - student).pow(2).flatten()
    keep = max(distance.numel() - math.ceil((distance.numel() - 1) * quantile), 1)
    hard = distance >= distance.topk(keep, sorted=False).values.min()
    return torch.where(hard, distance, 0.0).sum() / hard.sum()


class EfficientAdLoss(nn.Module):
    """L = L_hard + L_penalty + L_AE + L_STAE, unweighted, as in the paper."""

    def __init__(self, hard_quantile: float = HARD_QUANTILE) -> None:
        super().__init__()
        self.hard_quantile = hard_quantile

    def forward(self, features: TrainingFeatures) -> dict[str, torch.Tensor]:
        """Return each loss term and their sum under ``"loss"``; the global branch's terms only when its outputs
        are there (``autoencoder_start``)."""
        losses = {"loss_hard": hard_feature_loss(features.teacher, features.student, self.hard_quantile)}
        if features.student_penalty is not None:
            losses["loss_penalty"] = features.student_penalty.pow(2).mean()
        if features.autoencoder_augmented is not None:
            losses["loss_ae"] = (features.teacher_augmented - features.autoencoder_augmented).pow(2).mean()
            losses["loss_stae"] = (features.autoencoder_augmented - features.student_augmented).pow(2).mean()
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses
