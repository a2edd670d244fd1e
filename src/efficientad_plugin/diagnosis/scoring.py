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
    """An image at the model's size with its local and global maps, each normalised on its own (0 at q_a, 0.1 at
    q_b of normal validation pixels) and unweighted; the anomaly map is their sum under the model's weights."""

    image: DatasetImage
    pixels: np.ndarray  # [H, W, 3] uint8
    local_map: np.ndarray  # [H, W] float32
    global_map: np.ndarray  # [H, W] float32
    weights: tuple[float, float] = (0.5, 0.5)  # (local, global): the model's branch weights

    @property
    def anomaly_map(self) -> np.ndarray:
        """The model's anomaly map: the weighted sum of the two normalised maps."""
        return self.weights[0] * self.local_map + self.weights[1] * self.global_map

    @property
    def score(self) -> float:
        """The model's image score before anomalib's post-processing: the anomaly map's maximum."""
        return float(self.anomaly_map.max())

    @property
    def local_share(self) -> float:
        """Share of the local map in the anomaly map at its maximum (positive parts only); NaN if neither is."""
        index = np.unravel_index(np.argmax(self.anomaly_map), self.anomaly_map.shape)
        local = max(self.weights[0] * float(self.local_map[index]), 0.0)
        global_ = max(self.weights[1] * float(self.global_map[index]), 0.0)
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
    weights = tuple(float(weight) for weight in generator.branch_weights)
    scored = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        pixels = torch.cat([F.interpolate(read_rgb(image.path)[None], size=model.image_size, mode="bilinear",
                                          antialias=True) for image in batch])
        local, global_ = generator.branch_maps(*model.raw_maps(pixels), model.image_size)
        rgb = (pixels.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
        scored += [ScoredImage(image, rgb[index], local[index, 0].numpy(), global_[index, 0].numpy(), weights)
                   for index, image in enumerate(batch)]
    return scored
