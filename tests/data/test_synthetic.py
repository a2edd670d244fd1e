"""Tests for the synthetic MVTec-style generator and the bundled DeepPCB sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientad_plugin.data import generate_mvtec_dataset

DATASETS_DIR = Path(__file__).parents[2] / "datasets"
SIZE = (64, 96)  # (height, width), deliberately rectangular


def _pngs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.png"))


def _mask_for(image_path: Path, root: Path) -> Path:
    return root / "ground_truth" / "defect" / f"{image_path.stem}_mask.png"


def _as_float(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return generate_mvtec_dataset(
        root, image_size=SIZE, num_train=6, num_test_good=3, num_test_defect=4, seed=1
    )


def test_layout_and_counts_rectangular(small_dataset: Path) -> None:
    assert small_dataset.name == "synthetic"
    expected = {"train/good": 6, "test/good": 3, "test/defect": 4, "ground_truth/defect": 4}
    for sub, count in expected.items():
        assert len(_pngs(small_dataset / sub)) == count, sub
    height, width = SIZE
    for path in _pngs(small_dataset / "train/good") + _pngs(small_dataset / "test/defect"):
        with Image.open(path) as image:
            assert image.mode == "RGB"
            assert image.size == (width, height)
    for path in _pngs(small_dataset / "test/defect"):
        assert _mask_for(path, small_dataset).is_file()


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    kwargs = {"image_size": SIZE, "num_train": 3, "num_test_good": 2, "num_test_defect": 2}
    first = snapshot(generate_mvtec_dataset(tmp_path / "a", seed=7, **kwargs))
    second = snapshot(generate_mvtec_dataset(tmp_path / "b", seed=7, **kwargs))
    other = snapshot(generate_mvtec_dataset(tmp_path / "c", seed=8, **kwargs))
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_defect_masks_match_visible_local_defects(small_dataset: Path) -> None:
    normal_mean = np.mean([_as_float(p) for p in _pngs(small_dataset / "train/good")], axis=0)
    for path in _pngs(small_dataset / "test/defect"):
        with Image.open(_mask_for(path, small_dataset)) as mask_image:
            assert mask_image.mode == "L"
            mask = np.asarray(mask_image)
        assert mask.shape == SIZE
        assert set(np.unique(mask).tolist()) == {0, 255}
        inside = mask > 0
        assert 0.002 < inside.mean() < 0.1  # local: a small fraction of the image
        diff = np.abs(_as_float(path) - normal_mean).mean(axis=-1)
        assert diff[inside].mean() > 0.2
        assert diff[inside].mean() > 3 * diff[~inside].mean()


def test_anomalib_mvtec_datamodule_loads_it(small_dataset: Path) -> None:
    mvtec = pytest.importorskip("anomalib.data").MVTecAD
    datamodule = mvtec(
        root=small_dataset.parent,
        category=small_dataset.name,
        train_batch_size=1,
        eval_batch_size=2,
        num_workers=0,
    )
    datamodule.setup()
    train_batch = next(iter(datamodule.train_dataloader()))
    assert tuple(train_batch.image.shape) == (1, 3, *SIZE)
    assert not train_batch.gt_label.any()

    seen_defect = False
    for batch in datamodule.test_dataloader():
        assert batch.gt_mask is not None
        assert tuple(batch.gt_mask.shape[-2:]) == SIZE
        has_mask = batch.gt_mask.flatten(1).any(dim=1)
        assert has_mask.tolist() == batch.gt_label.bool().tolist()
        seen_defect |= bool(batch.gt_label.any())
    assert seen_defect


def test_bundled_deeppcb_mini_sample() -> None:
    root = DATASETS_DIR / "deeppcb_mini" / "pcb"
    assert (DATASETS_DIR / "deeppcb_mini" / "LICENSE").is_file()
    assert len(_pngs(root / "train/good")) == 200
    assert len(_pngs(root / "test/good")) == 50
    defects = _pngs(root / "test/defect")
    assert len(defects) == 50
    assert len(_pngs(root / "ground_truth/defect")) == 50
    for path in defects:
        mask_path = _mask_for(path, root)
        assert mask_path.is_file(), mask_path
        with Image.open(path) as image, Image.open(mask_path) as mask:
            assert mask.size == image.size
            assert np.asarray(mask).any()
