"""Tests for efficientad_plugin.evaluation: AUROC of raw scores and of an exported model on a test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efficientad_plugin.evaluation import auroc, mvtec_test_images


def test_auroc_keeps_the_order_of_large_raw_scores() -> None:
    """torchmetrics would take these for logits: sigmoid rounds all of them to 1.0 and the AUROC to 0.5."""
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(torch.tensor([20.0, 30.0, 40.0, 50.0]), labels) == 1.0
    assert auroc(torch.tensor([50.0, 40.0, 30.0, 20.0]), labels) == 0.0
    assert auroc(torch.full((4,), 7.0), labels) == 0.5


def test_test_split_lists_labels_and_masks(synthetic_root: Path) -> None:
    images = mvtec_test_images(synthetic_root / "synthetic")
    assert sorted(image.label for image in images) == [0] * 4 + [1] * 4
    assert all(image.mask is not None and image.mask.is_file() for image in images if image.label)
    assert all(image.mask is None for image in images if not image.label)


def test_test_split_without_defects_is_refused(tmp_path: Path, synthetic_root: Path) -> None:
    (tmp_path / "test" / "good").mkdir(parents=True)
    source = next((synthetic_root / "synthetic" / "test" / "good").iterdir())
    (tmp_path / "test" / "good" / source.name).write_bytes(source.read_bytes())
    with pytest.raises(ValueError, match="needs both good and defective images"):
        mvtec_test_images(tmp_path)
