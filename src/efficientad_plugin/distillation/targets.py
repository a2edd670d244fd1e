"""The distillation target: a pretrained backbone's patch features, as the paper aggregates them (App. A)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ..backbones import timm_state_dict
from ..pdn import TEACHER_CHANNELS
from ..torch_model import IMAGENET_MEAN, IMAGENET_STD

AGGREGATION_DIMENSION = 1024  # per-layer width before the final pooling to 384 channels (paper, PatchCore)


def load_backbone(name: str, weights: str | Path | None, layers: Sequence[int]) -> nn.Module:
    """A timm feature extractor for ``layers`` with ImageNet weights from a local file (see ``backbones``).

    Without a file, timm's own pretrained weights are used, which needs them in timm's cache or the internet.
    """
    import timm  # heavy; only distillation and the probe need it

    if weights is None:
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(layers))
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(timm_state_dict(name, weights))
    extractor = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers))
    missing, _ = extractor.load_state_dict(full.state_dict(), strict=False)
    if missing:
        msg = f"timm's feature extractor for {name} needs weights the full model lacks: {missing[:5]}"
        raise ValueError(msg)
    return extractor


class FeatureTarget(nn.Module):
    """Backbone features aggregated over 3x3 neighbourhoods, at stride 8, pooled to ``out_channels``.

    anomalib's PatchCore aggregates the same way inside its model; this is ours because the distillation needs the
    pooled 384-channel map at the backbone's stride-8 grid, which PatchCore does not expose.
    """

    def __init__(self, backbone: nn.Module, out_channels: int = TEACHER_CHANNELS) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.out_channels = out_channels
        config = getattr(backbone, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(config.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.get("std", IMAGENET_STD)).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> FeatureTarget:
        """The backbone stays in eval mode (batch-norm statistics frozen) whatever Lightning sets."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 2H, 2W]`` images in [0, 1] -> ``[B, out_channels, H/4, W/4]`` targets."""
        features = self.backbone((images - self.mean) / self.std)
        size = features[0].shape[-2:]
        pooled = []
        for feature in features:
            feature = F.avg_pool2d(feature, 3, stride=1, padding=1)
            feature = F.interpolate(feature, size=size, mode="bilinear") if feature.shape[-2:] != size else feature
            pooled.append(_pool_channels(feature, AGGREGATION_DIMENSION))
        return _pool_channels(torch.cat(pooled, dim=1), self.out_channels)


def _pool_channels(features: torch.Tensor, channels: int) -> torch.Tensor:
    batch, _, height, width = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, 1, features.shape[1])
    return F.adaptive_avg_pool1d(flat, channels).reshape(batch, height, width, channels).permute(0, 3, 1, 2)
