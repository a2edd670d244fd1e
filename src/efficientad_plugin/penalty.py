"""The pretraining penalty set: natural images whose student outputs are pushed towards zero (paper §3.2)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from .images import list_images, read_rgb
from .input_checks import check_samples
from .randomness import PENALTY_STREAM, step_generator

GRAYSCALE_PROBABILITY = 0.3
BUNDLED = "bundled"
BUNDLED_FOLDER = Path(__file__).parent / "assets" / "penalty_images"


def resolve_penalty_dir(penalty_dir: str | Path) -> Path:
    """The folder named by ``penalty_dir``; ``"bundled"`` is the 60 public-domain photo crops shipped here."""
    return BUNDLED_FOLDER if str(penalty_dir) == BUNDLED else Path(penalty_dir).expanduser()


class PenaltyImages:
    """Any folder of natural images (ImageNet in the paper), drawn one per training step.

    The draw for step ``n`` depends only on ``seed`` and ``n``, so a resumed run sees the same images as an
    uninterrupted one and nothing stateful (no DataLoader iterator) lives on the model.
    Transform: resize to 2H x 2W, grayscale with probability 0.3, centre crop H x W.
    """

    def __init__(self, folder: str | Path, image_size: tuple[int, int]) -> None:
        self.folder = resolve_penalty_dir(folder)
        self.paths = list_images(self.folder)
        check_samples(((path, None) for path in self.paths), decode_only=True)  # not at step 40,000
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, step: int, seed: int) -> torch.Tensor:
        """The penalty image of training step ``step``: ``[1, 3, H, W]`` in [0, 1]."""
        generator = step_generator(seed, step, PENALTY_STREAM)
        index = int(torch.randint(len(self.paths), (1,), generator=generator))
        to_gray = bool(torch.rand(1, generator=generator) < GRAYSCALE_PROBABILITY)
        height, width = self.image_size
        image = TF.resize(read_rgb(self.paths[index]), [2 * height, 2 * width], antialias=True)
        if to_gray:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return TF.center_crop(image, [height, width]).unsqueeze(0)
