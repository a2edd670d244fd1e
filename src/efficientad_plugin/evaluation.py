"""Image and pixel AUROC of an exported model on the test split of an MVTec-layout category folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchmetrics.classification import BinaryAUROC

from .images import list_images

if TYPE_CHECKING:  # OpenVINO is an optional extra: importing it here broke `pip install .` users of diagnosis
    from .inference import OpenVinoDetector


@dataclass(frozen=True)
class TestImage:
    """One test image: its label (1 = defective) and, for a defective one, its mask if the dataset has one."""

    path: Path
    label: int
    mask: Path | None


def mvtec_split_images(category: str | Path, split: str = "test") -> list[TestImage]:
    """Every ``<category>/<split>/<type>`` folder's images: ``good`` normal, other types defective, with masks.

    A defective image's mask is ``ground_truth/<type>/<stem>_mask.png`` when that file exists.
    """
    category = Path(category)
    images = []
    for folder in sorted(path for path in (category / split).iterdir() if path.is_dir()):
        label = int(folder.name != "good")
        for path in list_images(folder):
            mask = category / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            images.append(TestImage(path, label, mask if label and mask.is_file() else None))
    return images


def mvtec_test_images(category: str | Path) -> list[TestImage]:
    """``<category>/test/good`` (normal) and every other ``test/<defect>`` folder, masks from ``ground_truth``."""
    test_images = mvtec_split_images(category, "test")
    if not any(image.label for image in test_images) or all(image.label for image in test_images):
        msg = f"{Path(category) / 'test'} needs both good and defective images to measure AUROC."
        raise ValueError(msg)
    return test_images


def defect_mask(test_image: TestImage, shape: tuple[int, int]) -> np.ndarray:
    """The image's defect mask at ``shape``: its mask file, else all ones (defective) or zeros (good)."""
    if test_image.mask is None:
        return np.full(shape, bool(test_image.label))  # a defective image without a mask: every pixel counts
    with Image.open(test_image.mask) as mask:
        return np.asarray(mask.convert("L").resize(shape[::-1], Image.Resampling.NEAREST)) > 0


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (any real values) for binary ``labels``.

    Scores are min-max scaled first: torchmetrics takes values outside [0, 1] for logits and applies a sigmoid,
    which rounds every score above ~17 to 1.0 in float32 and erases their order.
    """
    scores = scores.flatten().double()
    span = scores.max() - scores.min()
    scaled = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    return float(BinaryAUROC()(scaled, labels.flatten().long()))


def evaluate_detector(detector: OpenVinoDetector, category: str | Path) -> dict[str, float]:
    """Image AUROC (from the scores) and pixel AUROC (maps against masks at the map's size) on the test split."""
    test_images = mvtec_test_images(category)
    predictions = detector.predict_files([image.path for image in test_images], keep_maps=True)
    failed = [prediction.error for prediction in predictions if prediction.error]
    if failed:
        raise RuntimeError(failed[0])
    scores = torch.tensor([prediction.score for prediction in predictions])
    labels = torch.tensor([image.label for image in test_images])
    maps = torch.stack([torch.from_numpy(prediction.anomaly_map) for prediction in predictions])
    masks = torch.stack([torch.from_numpy(defect_mask(image, prediction.anomaly_map.shape))
                         for image, prediction in zip(test_images, predictions, strict=True)])
    return {"image_AUROC": auroc(scores, labels), "pixel_AUROC": auroc(maps, masks)}
