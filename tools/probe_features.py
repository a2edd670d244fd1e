"""How well do a teacher's features separate defects from normal parts? A training-free nearest-neighbour probe.

Features of the training images form a memory bank (a random subset of patches); a test image's anomaly map is
each patch's distance to its nearest neighbour in the bank, its score the map's maximum (PatchCore without the
coreset). Image and pixel AUROC on an MVTec-layout category judge a teacher in minutes, without a training run,
and compare it with an untrained PDN and with the backbone it was distilled from.

example: python tools/probe_features.py datasets/deeppcb_mini/pcb --features LITE0_NATURAL2K_V1 untrained lite0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812

from efficientad_plugin.backbones import LITE_MODELS, lite_weights_file
from efficientad_plugin.distillation import FeatureTarget, load_backbone
from efficientad_plugin.evaluation import auroc, defect_mask, mvtec_test_images
from efficientad_plugin.images import list_images, read_rgb
from efficientad_plugin.pdn import PatchDescriptionNetwork, load_pdn_state_dict
from efficientad_plugin.teacher_weights import load_teacher_state_dict
from efficientad_plugin.torch_model import IMAGENET_MEAN, IMAGENET_STD

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


@torch.no_grad()
def probe(category: str | Path, extractor: Extractor, seed: int = 0) -> dict[str, float]:
    """Image and pixel AUROC of nearest-neighbour distances in ``extractor``'s feature space."""
    category = Path(category)
    generator = torch.Generator().manual_seed(seed)
    bank = torch.cat([extractor(read_rgb(path)[None])[0].flatten(1).T for path in list_images(category / "train")])
    bank = bank[torch.randperm(len(bank), generator=generator)[:BANK_PATCHES]]
    scores, labels, maps, masks = [], [], [], []
    for test_image in mvtec_test_images(category):
        image = read_rgb(test_image.path)[None]
        features = extractor(image)[0]
        distances = torch.cdist(features.flatten(1).T, bank).min(dim=1).values.view(1, 1, *features.shape[-2:])
        maps.append(F.interpolate(distances, size=image.shape[-2:], mode="bilinear")[0, 0])
        scores.append(distances.max())
        labels.append(test_image.label)
        masks.append(torch.from_numpy(defect_mask(test_image, tuple(maps[-1].shape))))
    return {"image_AUROC": auroc(torch.stack(scores), torch.tensor(labels)),
            "pixel_AUROC": auroc(torch.stack(maps), torch.stack(masks))}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Probe each feature source on the category and print the AUROCs as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path, help="MVTec-layout category folder (train/good, test/*)")
    parser.add_argument("--features", nargs="+", required=True,
                        help="teacher weights (enum entry, .pth path or untrained) or lite0/lite1/lite2")
    parser.add_argument("--model-size", choices=("small", "medium"), default="small")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained PDN and the bank's subset")
    args = parser.parse_args(argv)
    results = {}
    for features in args.features:
        torch.manual_seed(args.seed)
        results[features] = probe(args.category, feature_extractor(features, args.model_size), args.seed)
        print(features, results[features], flush=True)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
