"""The autoencoder-branch augmentation of EfficientAD (paper §3.3)."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF  # noqa: N812

_ADJUSTMENTS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


def random_color_adjustment(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply one of brightness, contrast or saturation, chosen uniformly, with a factor drawn from U(0.8, 1.2)."""
    choice = int(torch.randint(len(_ADJUSTMENTS), (1,), generator=generator))
    factor = float(torch.empty(1).uniform_(0.8, 1.2, generator=generator))
    return _ADJUSTMENTS[choice](image, factor)


def random_crop(images: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``size`` crop of ``images`` ``[B, C, H, W]`` at one random position drawn from ``generator`` (native mode's
    training view: torchvision's ``RandomCrop`` draws from the global generator, which a resumed run cannot replay)."""
    height, width = size
    top = int(torch.randint(images.shape[-2] - height + 1, (1,), generator=generator))
    left = int(torch.randint(images.shape[-1] - width + 1, (1,), generator=generator))
    return images[..., top : top + height, left : left + width]
