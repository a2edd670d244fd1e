"""Distillation images and a data order that depends only on the seed and the step (exact resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from ..images import read_rgb
from ..randomness import combined_seed

GRAYSCALE_PROBABILITY = 0.1


class DistillationImages(Dataset):
    """Pairs (backbone input at 2x, PDN input) of one image, with the paper's random grayscale applied to both.

    Items are addressed by ``(index, seed)`` so that the augmentation of every sample is fixed by the sampler.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, crop_size: int | None) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.crop_size = crop_size or image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        large = TF.resize(read_rgb(self.paths[index]), [2 * self.image_size] * 2, antialias=True)
        if torch.rand(1, generator=generator) < GRAYSCALE_PROBABILITY:
            large = TF.rgb_to_grayscale(large, num_output_channels=3)
        if self.crop_size < self.image_size:
            top, left = (int(torch.randint(self.image_size - self.crop_size + 1, (1,), generator=generator)) * 2
                         for _ in range(2))
            large = large[:, top : top + 2 * self.crop_size, left : left + 2 * self.crop_size]
        return large, TF.resize(large, [self.crop_size] * 2, antialias=True)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start``..``stop``; the batch of step n depends only on ``seed`` and n.

    ``start`` may be a callable read when iteration begins (the trainer's restored step), so a resumed Lightning
    run continues with the batch an uninterrupted run would draw, without a stateful loader. Epochs are seeded
    permutations of the images.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, start: int | Callable[[], int],
                 stop: int) -> None:
        self.num_images, self.batch_size, self.seed, self.start, self.stop = num_images, batch_size, seed, start, stop

    def _start(self) -> int:
        return self.start() if callable(self.start) else self.start

    def __len__(self) -> int:
        return max(0, self.stop - self._start())

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The ``(image index, augmentation seed)`` pairs of step ``step``."""
        first = step * self.batch_size
        pairs = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_images)
            order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed + epoch))
            pairs.append((int(order[offset]), combined_seed(self.seed, position)))
        return pairs

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return (self.batch(step) for step in range(self._start(), self.stop))
