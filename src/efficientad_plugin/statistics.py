"""Per-channel mean and standard deviation of feature maps, streamed over batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ChannelStatistics:
    """Running per-channel mean and std of ``[B, C, H, W]`` batches, for several feature streams in one pass.

    Sums in float64, so thousands of batches of bf16/fp32 features lose no precision; torch and torchmetrics offer
    no streaming per-channel variance.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features ``[B, C, H, W]``."""
        features = features.double()
        batch_sum, batch_squares = features.sum(dim=(0, 2, 3)), features.pow(2).sum(dim=(0, 2, 3))
        self.total = batch_sum if self.total is None else self.total + batch_sum
        self.squares = batch_squares if self.squares is None else self.squares + batch_squares
        self.count += features[:, 0].numel()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) std per channel as ``[C]`` float32 tensors; an error when nothing was added."""
        if self.total is None or self.squares is None:
            msg = "Cannot compute channel statistics of no images: the image set is empty."
            raise ValueError(msg)
        mean = self.total / self.count
        return mean.float(), (self.squares / self.count - mean.pow(2)).clamp_min(0).sqrt().float()


def channel_statistics(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel of ``[B, C, H, W]`` batches, as ``[C]`` float32 tensors (``ChannelStatistics``).

    An empty iterable is an error.
    """
    statistics = ChannelStatistics()
    for features in batches:
        statistics.update(features)
    return statistics.compute()
