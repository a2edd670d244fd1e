"""How well do features separate defects from normal parts? A training-free nearest-neighbour probe.

Features of the training images form a memory bank (a random subset of patches); a test image's anomaly map is
each patch's distance to its nearest neighbour in the bank, its score the map's maximum (PatchCore without the
coreset). Image and pixel AUROC on an MVTec-layout category judge a teacher in minutes, without a training run,
and compare it with an untrained PDN and with the backbone it was distilled from. anomalib's PatchCore needs a
trained Lightning model and a backbone from timm; this judges any feature function, a PDN teacher included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812

from ..backbones import LITE_MODELS, lite_weights_file
from ..evaluation import auroc, defect_mask, mvtec_split_images, mvtec_test_images
from ..images import read_rgb
from ..pdn import PatchDescriptionNetwork, load_pdn_state_dict
from ..teacher_weights import load_teacher_state_dict
from ..torch_model import IMAGENET_MEAN, IMAGENET_STD
from .targets import FeatureTarget, load_backbone

BANK_PATCHES = 40_000

Extractor = Callable[[torch.Tensor], torch.Tensor]


def feature_extractor(features: str, model_size: str = "small") -> Extractor:
    """``lite0``/``lite1``/``lite2``: the distillation target (backbone at 2x); anything else: teacher weights."""
    if features in LITE_MODELS:
        target = FeatureTarget(load_backbone(LITE_MODELS[features], lite_weights_file(features), (2, 3))).eval()
        return lambda images: target(F.interpolate(images, scale_factor=2, mode="bilinear"))
    teacher = PatchDescriptionNetwork(model_size).eval()
    state_dict, description = load_teacher_state_dict(features, model_size)
    if state_dict is not None:
        load_pdn_state_dict(teacher, state_dict, description)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return lambda images: teacher((images - mean) / std)


def _subset(items: list, count: int | None, generator: torch.Generator) -> list:
    if count is None or count >= len(items):
        return items
    return [items[index] for index in sorted(torch.randperm(len(items), generator=generator)[:count].tolist())]


def _load(path: Path, image_size: int | None) -> torch.Tensor:
    image = read_rgb(path)[None]
    return image if image_size is None else F.interpolate(image, size=(image_size, image_size), mode="bilinear",
                                                           antialias=True)


@torch.no_grad()
def probe(category: str | Path, extractor: Extractor, seed: int = 0, image_size: int | None = None,
          bank_patches: int = BANK_PATCHES, train_images: int | None = None,
          test_images: int | None = None) -> dict[str, float]:
    """Image and pixel AUROC of nearest-neighbour distances in ``extractor``'s feature space, and the image counts.

    ``image_size`` resizes every image to that square (as the model does; ``None`` keeps each image's size);
    ``train_images``/``test_images`` draw seeded subsets (normal and defective test images alike), for a quick
    check; the bank is a seeded subset of ``bank_patches`` patches.
    """
    category = Path(category)
    generator = torch.Generator().manual_seed(seed)
    train = _subset([image.path for image in mvtec_split_images(category, "train")], train_images, generator)
    bank = torch.cat([extractor(_load(path, image_size))[0].flatten(1).T for path in train])
    bank = bank[torch.randperm(len(bank), generator=generator)[:bank_patches]]
    tests = mvtec_test_images(category)
    normal = _subset([image for image in tests if not image.label], None if test_images is None else test_images // 2,
                     generator)
    defective = _subset([image for image in tests if image.label],
                        None if test_images is None else test_images - len(normal), generator)
    scores, labels, maps, masks = [], [], [], []
    for test_image in normal + defective:
        image = _load(test_image.path, image_size)
        features = extractor(image)[0]
        distances = torch.cdist(features.flatten(1).T, bank).min(dim=1).values.view(1, 1, *features.shape[-2:])
        maps.append(F.interpolate(distances, size=image.shape[-2:], mode="bilinear")[0, 0])
        scores.append(distances.max())
        labels.append(test_image.label)
        masks.append(torch.from_numpy(defect_mask(test_image, tuple(maps[-1].shape))))
    pixel_maps = torch.cat([item.flatten() for item in maps])
    pixel_masks = torch.cat([item.flatten() for item in masks])
    return {"image_AUROC": auroc(torch.stack(scores), torch.tensor(labels)),
            "pixel_AUROC": auroc(pixel_maps, pixel_masks), "train_images": len(train),
            "normal_images": len(normal), "defective_images": len(defective)}
