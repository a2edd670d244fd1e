"""Anomaly maps of the student-teacher and autoencoder branches, and their quantile normalisation (paper §3.4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

QUANTILE_START = 0.9  # q_a, mapped to 0
QUANTILE_END = 0.995  # q_b, mapped to 0.1
MAP_PADDING = 4  # the unpadded PDN output misses 16 input px per side: 4 px at its stride of 4


def channel_mean_squared_error(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean over channels of the squared difference: ``[B, C, h, w]`` -> ``[B, 1, h, w]``."""
    return (first - second).pow(2).mean(dim=1, keepdim=True)


def exact_quantiles(values: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Quantiles with linear interpolation, as ``torch.quantile``, without its input-size limit or subsampling."""
    ordered = values.flatten().double().sort().values
    positions = torch.tensor(quantiles, dtype=torch.float64) * (ordered.numel() - 1)
    lower = positions.floor().long()
    upper = positions.ceil().long()
    weight = (positions - lower).to(ordered.device)
    return (ordered[lower] + (ordered[upper] - ordered[lower]) * weight).float()


class AnomalyMapGenerator(nn.Module):
    """Normalises both maps so that their q_a -> 0 and q_b -> 0.1, averages them, pads and upsamples.

    The quantiles are buffers: fitted once after training, saved in checkpoints and constants in exports.
    They start as NaN so that an unfitted model cannot pass for a fitted one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("st_quantiles", torch.full((2,), torch.nan))
        self.register_buffer("ae_quantiles", torch.full((2,), torch.nan))

    @property
    def is_fitted(self) -> bool:
        """Whether the quantiles have been fitted."""
        return not bool(torch.isnan(self.st_quantiles).any() or torch.isnan(self.ae_quantiles).any())

    @torch.no_grad()
    def fit(self, st_maps: torch.Tensor, ae_maps: torch.Tensor) -> None:
        """Fit q_a and q_b of each branch on raw (unpadded) maps of normal images."""
        for maps, buffer in ((st_maps, self.st_quantiles), (ae_maps, self.ae_quantiles)):
            quantiles = exact_quantiles(maps, (QUANTILE_START, QUANTILE_END))
            if not bool(quantiles[1] > quantiles[0]):
                msg = f"Cannot normalise anomaly maps: q_a = q_b = {float(quantiles[0]):.3g} on the validation images."
                raise ValueError(msg)
            buffer.copy_(quantiles.to(buffer.device))

    @staticmethod
    def _normalise(anomaly_map: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
        return 0.1 * (anomaly_map - quantiles[0]) / (quantiles[1] - quantiles[0])

    def forward(self, st_map: torch.Tensor, ae_map: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Combine raw branch maps ``[B, 1, h, w]`` into the anomaly map ``[B, 1, H, W]``."""
        combined = 0.5 * self._normalise(st_map, self.st_quantiles) + 0.5 * self._normalise(ae_map, self.ae_quantiles)
        combined = F.pad(combined, [MAP_PADDING] * 4)
        return F.interpolate(combined, size=image_size, mode="bilinear")
