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
