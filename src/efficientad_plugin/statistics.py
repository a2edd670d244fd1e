"""Per-channel mean and standard deviation of feature maps, streamed over batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def channel_statistics(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel of ``[B, C, H, W]`` batches, as ``[C]`` float32 tensors.

    Running sums in float64, so thousands of batches of bf16/fp32 features lose no precision; torch and
    torchmetrics offer no streaming per-channel variance. An empty iterable is an error.
    """
    total = squares = None
    count = 0
    for features in batches:
        features = features.double()
        batch_sum, batch_squares = features.sum(dim=(0, 2, 3)), features.pow(2).sum(dim=(0, 2, 3))
        total = batch_sum if total is None else total + batch_sum
        squares = batch_squares if squares is None else squares + batch_squares
        count += features[:, 0].numel()
    if total is None:
        msg = "Cannot compute channel statistics of no images: the image set is empty."
        raise ValueError(msg)
    mean = total / count
    return mean.float(), (squares / count - mean.pow(2)).clamp_min(0).sqrt().float()
