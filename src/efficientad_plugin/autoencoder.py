"""The autoencoder of EfficientAD's logical-anomaly branch (paper §3.3, Table 7)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .pdn import TEACHER_CHANNELS, pdn_output_size

MIN_IMAGE_SIDE = 256  # five stride-2 convolutions and the 8x8 bottleneck convolution need 256 px per side


def check_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return ``image_size`` as ``(height, width)``; raise ``ValueError`` below the autoencoder's minimum."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(side) for side in image_size)
    if len(size) != 2 or min(size) < MIN_IMAGE_SIDE:
        msg = (
            f"image_size must be (height, width) with both sides >= {MIN_IMAGE_SIDE} px, got {image_size!r}: the "
            f"autoencoder's encoder halves the image five times and then applies an 8x8 convolution. "
            f"For small parts, upscale to {MIN_IMAGE_SIDE}."
        )
        raise ValueError(msg)
    return size  # type: ignore[return-value]


def _decoder_sizes(length: int) -> tuple[int, ...]:
    # The paper's 3, 8, 15, 32, 63, 127 at 256 px, scaled with the image side.
    return (length // 64 - 1, length // 32, length // 16 - 1, length // 8, length // 4 - 1, length // 2 - 1)


class AutoEncoder(nn.Module):
    """Encoder to a 64-channel bottleneck and a decoder without skip connections to a teacher-shaped map.

    The input is an ImageNet-normalised image of ``image_size``; the output has the teacher's channels and the
    spatial size of a PDN output without padding.
    """

    def __init__(self, image_size: tuple[int, int] = (256, 256), out_channels: int = TEACHER_CHANNELS) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.output_size = pdn_output_size(self.image_size)
        self.upsample_sizes = list(zip(*(_decoder_sizes(side) for side in self.image_size), strict=True))
        widths = (3, 32, 32, 64, 64, 64)
        encoder: list[nn.Module] = []
        for in_channels, width in zip(widths, widths[1:], strict=False):
            encoder += [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        encoder.append(nn.Conv2d(64, 64, 8))
        self.encoder = nn.Sequential(*encoder)
        self.decoder_stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for _ in self.upsample_sizes
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, out_channels, 3, padding=1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Reconstruct teacher-like features ``[B, out_channels, h, w]`` from an image ``[B, 3, H, W]``."""
        features = self.encoder(image)
        for size, stage in zip(self.upsample_sizes, self.decoder_stages, strict=True):
            features = stage(F.interpolate(features, size=size, mode="bilinear"))
        features = F.interpolate(features, size=self.output_size, mode="bilinear")
        return self.head(features)
