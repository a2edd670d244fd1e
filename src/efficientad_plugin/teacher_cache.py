"""A memory-bounded cache of the frozen teacher's outputs on un-augmented training images.

The teacher is frozen and its channel statistics are fixed before the first step, so its normalised output on a
training image is the same in every epoch, as long as nothing random happens to the image on its way to the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

logger = logging.getLogger(__name__)

MIB = 2**20
# Transforms known to map an image to the same output every time; anything else may be random. Exact types only:
# a subclass may add randomness.
_DETERMINISTIC = {v2.Resize, v2.CenterCrop, v2.Pad, v2.Normalize, v2.Grayscale, v2.RGB, v2.ToDtype, v2.ToImage,
                  v2.ToPureTensor, v2.Identity}


def _first_unsafe_transform(transform: object) -> str | None:
    """The class name of the first transform not known to be deterministic, ``None`` when all are."""
    if transform is None:
        return None
    if type(transform) is v2.Compose:
        return next(filter(None, map(_first_unsafe_transform, transform.transforms)), None)
    return None if type(transform) in _DETERMINISTIC else type(transform).__name__


def uncacheable_reason(train_dataset: object, pre_processor: object) -> str | None:
    """Why teacher outputs of this training data cannot be reused across epochs, or ``None`` when they can.

    ``train_dataset`` is the training loader's dataset (an anomalib dataset, possibly inside a ``Subset``);
    ``pre_processor`` the model's, whose transform also runs on every training batch.
    """
    while not hasattr(train_dataset, "augmentations") and hasattr(train_dataset, "dataset"):
        train_dataset = train_dataset.dataset
    if not hasattr(train_dataset, "augmentations"):
        return f"the training dataset ({type(train_dataset).__name__}) does not say which augmentations it applies"
    for where, transform in (("train augmentation", train_dataset.augmentations),
                             ("pre-processor transform", getattr(pre_processor, "transform", None))):
        if (name := _first_unsafe_transform(transform)) is not None:
            return f"the {where} {name} is random or not known to be deterministic"
    return None


class TeacherCache:
    """Teacher outputs by image key (its path), stored until they would exceed ``budget_mib`` MiB.

    Past the budget nothing more is stored: the images that did not fit are recomputed at every step.
    Outputs are stored as computed (device, dtype), so a cached step gives the same numbers as an uncached one.
    """

    def __init__(self, budget_mib: float) -> None:
        self.budget_bytes = int(budget_mib * MIB)
        self.nbytes = 0
        self.full = False
        self._outputs: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._outputs)

    def lookup(self, keys: Sequence[str] | None, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The stored outputs for the batch's ``keys``, else ``compute()``'s, stored if new and within the budget."""
        if keys and all(key in self._outputs for key in keys):
            stored = [self._outputs[key] for key in keys]
            return stored[0].unsqueeze(0) if len(stored) == 1 else torch.stack(stored)  # batch 1: a view, no copy
        outputs = compute()
        if not keys or self.full or any(key in self._outputs for key in keys):
            return outputs
        size = outputs.element_size() * outputs.numel()
        if self.nbytes + size > self.budget_bytes:
            self.full = True
            logger.info("Teacher cache full at %d images (%.0f of %.0f MiB): the teacher recomputes the rest.",
                        len(self), self.nbytes / MIB, self.budget_bytes / MIB)
            return outputs
        # a batch is stored whole, so the views it leaves behind share storage that is counted once
        self._outputs.update(zip(keys, outputs.detach(), strict=True))
        self.nbytes += size
        return outputs
