"""Tests for efficientad_plugin.input_checks: every bad training file is named before any training work."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import MVTecAD
from anomalib.data.utils import ValSplitMode
from PIL import Image

from efficientad_plugin.images import ImageReadError
from efficientad_plugin.input_checks import (
    check_datamodule,
    check_samples,
    image_problem,
    inspect_image,
    parse_val_split_mode,
)
from efficientad_plugin.penalty import PenaltyImages


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _bad_files(folder: Path) -> dict[str, Path]:
    """One file per fault that must stop training."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = _save(folder / "truncated.jpg", _noise(128, 128), quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    zero = folder / "zero.png"
    zero.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("not an image")
    one_pixel = _save(folder / "dot.png", _noise(1, 1))
    sixteen = folder / "depth.png"
    Image.fromarray(np.full((64, 64), 40_000, dtype=np.uint16)).save(sixteen)
    return {"truncated": truncated, "zero": zero, "text": text, "one_pixel": one_pixel, "sixteen_bit": sixteen}


def _good_files(folder: Path) -> list[Path]:
    """Modes and paths that must pass: gray, RGBA, palette, a large JPEG, a non-ASCII name."""
    rgb = _noise(64, 80)
    return [
        _save(folder / "gray.png", rgb[..., 0]),
        _save(folder / "rgba.png", np.dstack([rgb, np.full((64, 80), 200, np.uint8)])),
        _save(folder / "palette.png", np.asarray(Image.fromarray(rgb).convert("P"))),
        _save(folder / "large.jpg", _noise(3000, 4000), quality=80),
        _save(folder / "Prüfteil_检查" / "bauteil.png", rgb),
    ]


def test_every_bad_file_is_named_in_one_error(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path / "bad")
    good = _good_files(tmp_path / "good")
    with pytest.raises(ImageReadError) as error:
        check_samples([(str(path), None) for path in [*good, *bad.values()]])
    message = str(error.value)
    assert message.startswith(f"{len(bad)} input files cannot be used")
    for path in bad.values():
        assert str(path) in message
    for path in good:
        assert str(path) not in message
    assert "16-bit" in message and "smaller than one 33-pixel PDN patch" in message


def test_good_modes_sizes_and_non_ascii_paths_pass(tmp_path: Path) -> None:
    check_samples([(str(path), None) for path in _good_files(tmp_path)])


def test_decode_only_accepts_what_the_package_reads_itself(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    for name in ("sixteen_bit", "one_pixel"):
        assert image_problem(bad[name])[0] is not None
        assert image_problem(bad[name], decode_only=True)[0] is None
    assert image_problem(bad["truncated"], decode_only=True)[0] is not None


def test_decompression_bomb_is_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "huge.png", _noise(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses over twice this many pixels
    with pytest.raises(ImageReadError, match="huge.png"):
        inspect_image(path)


def test_mask_of_another_size_is_named_with_both_sizes(tmp_path: Path) -> None:
    image = _save(tmp_path / "part.png", _noise(64, 64))
    mask = _save(tmp_path / "part_mask.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(ImageReadError, match=r"part_mask.png: mask is 64x32 but its image is 64x64"):
        check_samples([(str(image), str(mask))])
    _save(mask, np.zeros((64, 64), np.uint8))
    check_samples([(str(image), str(mask))])


def test_exif_rotated_images_are_logged_not_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "photo.jpg", _noise(40, 60), exif=exif)
    assert inspect_image(path).exif_rotated
    with caplog.at_level(logging.WARNING):
        check_samples([(str(path), None)])
    assert "EXIF orientation" in caplog.text and str(path) in caplog.text


def test_penalty_folder_with_a_bad_file_fails_when_listed(tmp_path: Path) -> None:
    _save(tmp_path / "photo.png", _noise(64, 64))
    (tmp_path / "broken.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        PenaltyImages(tmp_path, (32, 32))


def _datamodule(root: Path) -> MVTecAD:
    datamodule = MVTecAD(root=root, category="synthetic", num_workers=0)
    datamodule.setup()
    return datamodule


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_root, tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("split", ["train/good", "test/good", "test/defect"])
def test_datamodule_check_finds_a_corrupt_file_in_any_split(dataset_copy: Path, split: str) -> None:
    corrupt = next((dataset_copy / "synthetic" / split).glob("*.png"))
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with pytest.raises(ImageReadError, match=corrupt.name):
        check_datamodule(_datamodule(dataset_copy))


def test_datamodule_check_passes_on_clean_data_after_reading_every_image(dataset_copy: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    images = [path for path in (dataset_copy / "synthetic").rglob("*.png") if "ground_truth" not in path.parts]
    with caplog.at_level(logging.INFO, logger="efficientad_plugin.input_checks"):
        check_datamodule(_datamodule(dataset_copy))  # raises on any problem
    assert f"Checked {len(images)} images" in caplog.text


def test_datamodule_check_finds_a_resized_mask(dataset_copy: Path) -> None:
    mask = next((dataset_copy / "synthetic" / "ground_truth").rglob("*.png"))
    Image.open(mask).resize((128, 128)).save(mask)
    with pytest.raises(ImageReadError, match=f"{mask.name}: mask is 128x128"):
        check_datamodule(_datamodule(dataset_copy))


def test_empty_training_folder_is_an_error_naming_the_root(dataset_copy: Path) -> None:
    for path in (dataset_copy / "synthetic" / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"MVTecAD found no training images \(root=.*category=synthetic"):
        check_datamodule(_datamodule(dataset_copy))


@pytest.mark.parametrize("value", ["from_train", "FROM_TRAIN", "ValSplitMode.FROM_TRAIN", ValSplitMode.FROM_TRAIN])
def test_val_split_mode_is_read_the_same_in_every_form(value: object) -> None:
    assert parse_val_split_mode(value) is ValSplitMode.FROM_TRAIN


def test_an_unknown_val_split_mode_names_the_valid_ones() -> None:
    assert parse_val_split_mode(None) is None
    with pytest.raises(ValueError, match="from_train") as error:
        parse_val_split_mode("from_trian")
    assert "from_trian" in str(error.value)
