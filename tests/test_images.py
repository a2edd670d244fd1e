"""Tests for efficientad_plugin.images: finding image files and decoding any common mode to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from PIL import Image

from efficientad_plugin.images import ImageReadError, list_images, read_rgb


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


@pytest.fixture
def rgb_array() -> np.ndarray:
    array = np.zeros((5, 7, 3), dtype=np.uint8)
    array[..., 0] = 255
    array[..., 1] = np.arange(7, dtype=np.uint8) * 10
    array[..., 2] = 128
    array[2, 3] = (1, 2, 3)
    return array


# --- list_images ----------------------------------------------------------------------------------------------


def test_list_images_finds_nested_mixed_case(tmp_path: Path) -> None:
    tiny = Image.new("RGB", (2, 2))
    expected = [
        _save(tmp_path / "a.jpg", tiny),
        _save(tmp_path / "B.PNG", tiny, format="PNG"),
        _save(tmp_path / "sub" / "c.bmp", tiny),
        _save(tmp_path / "sub" / "deeper" / "d.TIF", tiny, format="TIFF"),
        _save(tmp_path / "sub" / "e.JPG", tiny, format="JPEG"),
        _save(tmp_path / "f.tiff", tiny),
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.json").write_text("{}")
    (tmp_path / "sub" / "archive.png.zip").write_bytes(b"zip")
    (tmp_path / "folder.png").mkdir()  # a directory with an image suffix is not a file
    found = list_images(tmp_path)
    assert found == sorted(expected)
    assert all(isinstance(path, Path) for path in found)


def test_list_images_accepts_str(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", Image.new("L", (2, 2)))
    assert list_images(str(tmp_path)) == [path]


def test_list_images_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        list_images(missing)
    assert str(missing) in str(error.value)


def test_list_images_file_instead_of_folder(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", Image.new("L", (2, 2)))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_images(path)


def test_list_images_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.md").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="holds no images") as error:
        list_images(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert ".png" in str(error.value)


# --- read_rgb -------------------------------------------------------------------------------------------------


def _check(tensor: torch.Tensor, height: int, width: int) -> None:
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, height, width)
    assert tensor.min() >= 0 and tensor.max() <= 1


def test_read_rgb_png(tmp_path: Path, rgb_array: np.ndarray) -> None:
    tensor = read_rgb(_save(tmp_path / "rgb.png", Image.fromarray(rgb_array)))
    _check(tensor, 5, 7)
    expected = torch.from_numpy(rgb_array).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor, expected)
    assert tensor[0, 0].eq(1).all() and torch.allclose(tensor[2, 0], torch.full((7,), 128 / 255))
    assert tensor[:, 2, 3].tolist() == pytest.approx([1 / 255, 2 / 255, 3 / 255])


def test_read_rgb_gray(tmp_path: Path) -> None:
    array = np.array([[0, 51, 255]], dtype=np.uint8)
    tensor = read_rgb(_save(tmp_path / "gray.png", Image.fromarray(array, mode="L")))
    _check(tensor, 1, 3)
    for channel in tensor:
        assert channel[0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_read_rgb_palette(tmp_path: Path) -> None:
    image = Image.new("P", (3, 2))
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (768 - 9)
    image.putpalette(palette)
    image.putpixel((1, 0), 1)  # red
    image.putpixel((2, 1), 2)  # blue
    tensor = read_rgb(_save(tmp_path / "palette.png", image))
    _check(tensor, 2, 3)
    assert tensor[:, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert tensor[:, 1, 2].tolist() == [0.0, 0.0, 1.0]
    assert tensor[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_read_rgb_rgba_drops_alpha(tmp_path: Path, rgb_array: np.ndarray) -> None:
    alpha = np.full((5, 7, 1), 7, dtype=np.uint8)
    tensor = read_rgb(_save(tmp_path / "rgba.png", Image.fromarray(np.concatenate([rgb_array, alpha], axis=2))))
    _check(tensor, 5, 7)
    assert torch.equal(tensor, torch.from_numpy(rgb_array).permute(2, 0, 1).float() / 255)


def test_read_rgb_16_bit(tmp_path: Path) -> None:
    array = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    path = _save(tmp_path / "depth.png", Image.fromarray(array))
    with Image.open(path) as image:
        assert image.mode == "I;16"
    tensor = read_rgb(path)
    _check(tensor, 1, 4)
    for channel in tensor:
        assert channel[0].tolist() == pytest.approx([0.0, 32768 / 65535, 1.0, 257 / 65535], abs=1e-6)
    assert abs(float(tensor[0, 0, 1]) - 0.5) < 1e-4


def test_read_rgb_16_bit_tiff(tmp_path: Path) -> None:
    array = np.array([[65535, 0]], dtype=np.uint16)
    tensor = read_rgb(_save(tmp_path / "depth.tif", Image.fromarray(array)))
    _check(tensor, 1, 2)
    assert tensor[:, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_read_rgb_ignores_exif_rotation_as_anomalib_training_does(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 20 high, 40 wide
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _save(tmp_path / "photo.jpg", Image.fromarray(array), exif=exif, quality=95)
    tensor = read_rgb(path)
    _check(tensor, 20, 40)  # as stored
    assert tensor[0, 10, 5] > 0.9 and tensor[2, 10, 5] < 0.1
    assert torch.allclose(tensor, read_image(path, as_tensor=True))


def test_read_rgb_jpeg_without_exif_keeps_orientation(tmp_path: Path) -> None:
    tensor = read_rgb(_save(tmp_path / "plain.jpg", Image.new("RGB", (40, 20), (0, 255, 0))))
    _check(tensor, 20, 40)
    assert tensor[1].mean() > 0.95


def _truncated_png(tmp_path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    path = _save(tmp_path / "full.png", Image.fromarray(noise))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    return truncated


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_read_rgb_broken_files(tmp_path: Path, kind: str) -> None:
    if kind == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = _truncated_png(tmp_path)
    else:
        path = tmp_path / "text.png"
        path.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageReadError) as error:
        read_rgb(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_read_rgb_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageReadError) as error:
        read_rgb(missing)
    assert str(missing) in str(error.value)
