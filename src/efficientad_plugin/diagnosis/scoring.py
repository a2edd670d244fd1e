"""A trained checkpoint's model and its anomaly maps, split into the local (student-teacher) and global parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from ..anomaly_map import add_missing_branch_weights
from ..images import read_rgb
from ..torch_model import EfficientAdPluginModel
from .dataset import DatasetImage

BATCH_SIZE = 8  # images per forward pass: bounded memory, fewer calls


@dataclass(frozen=True)
class ScoredImage:
    """An image at the model's size with the local and global parts of its anomaly map (they add up to the map)."""

    image: DatasetImage
    pixels: np.ndarray  # [H, W, 3] uint8
    local_map: np.ndarray  # [H, W] float32
    global_map: np.ndarray  # [H, W] float32

    @property
    def anomaly_map(self) -> np.ndarray:
        """The model's anomaly map: quantile-normalised, 0 at q_a and 0.1 at q_b of normal validation pixels."""
        return self.local_map + self.global_map

    @property
    def score(self) -> float:
        """The model's image score before anomalib's post-processing: the anomaly map's maximum."""
        return float(self.anomaly_map.max())

    @property
    def local_share(self) -> float:
        """Share of the local map in the anomaly map at its maximum (positive parts only); NaN if neither is."""
        index = np.unravel_index(np.argmax(self.anomaly_map), self.anomaly_map.shape)
        local, global_ = max(float(self.local_map[index]), 0.0), max(float(self.global_map[index]), 0.0)
        return local / (local + global_) if local + global_ > 0 else float("nan")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of ``EfficientAdPlugin``, loaded as data only (tensors and plain values, no code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(checkpoint: dict[str, Any]) -> EfficientAdPluginModel:
    """The torch model with the checkpoint's weights, statistics and quantiles, in eval mode."""
    hyper_parameters = checkpoint.get("hyper_parameters", {})
    model = EfficientAdPluginModel(hyper_parameters.get("model_size", "small"),
                                   tuple(hyper_parameters.get("image_size", (256, 256))))
    prefix = "model."
    state_dict = {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}
    add_missing_branch_weights(state_dict, "anomaly_map_generator.")  # checkpoints from before branch weights
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def score_images(model: EfficientAdPluginModel, images: Sequence[DatasetImage],
                 batch_size: int = BATCH_SIZE) -> list[ScoredImage]:
    """Resize each image to the model's size as anomalib's pre-processor does and split its anomaly map."""
    generator = model.anomaly_map_generator
    scored = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        pixels = torch.cat([F.interpolate(read_rgb(image.path)[None], size=model.image_size, mode="bilinear",
                                          antialias=True) for image in batch])
        st_map, ae_map = model.raw_maps(pixels)
        # The generator is linear in each normalised branch, and a branch held at its q_a contributes zero:
        # so these two maps are each branch's exact part of the final map, and they add up to it.
        local = generator(st_map, torch.full_like(ae_map, float(generator.ae_quantiles[0])), model.image_size)
        global_ = generator(torch.full_like(st_map, float(generator.st_quantiles[0])), ae_map, model.image_size)
        rgb = (pixels.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
        scored += [ScoredImage(image, rgb[index], local[index, 0].numpy(), global_[index, 0].numpy())
                   for index, image in enumerate(batch)]
    return scored
