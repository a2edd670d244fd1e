"""Tests for efficientad_plugin.penalty: the per-step, seeded draw of penalty images and its transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientad_plugin.penalty import GRAYSCALE_PROBABILITY, PenaltyImages

# Saturated colours: no two equal, none gray, so the drawn image and the grayscale step are both recognisable.
COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (128, 0, 255),
]


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "penalty"
    for index, colour in enumerate(COLOURS):
        subfolder = folder / f"class{index % 2}"
        subfolder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), colour).save(subfolder / f"{index}.png")
    (folder / "readme.txt").write_text("ignored")
    return folder


def _colour_of(sample: torch.Tensor) -> tuple[int, int, int]:
    """The solid colour of a sample, as 0-255 ints; fails if the sample is not (nearly) solid."""
    pixels = sample[0].flatten(1)
    assert (pixels.amax(dim=1) - pixels.amin(dim=1)).max() < 1e-4
    return tuple(round(float(value) * 255) for value in pixels[:, 0])


def _is_gray(sample: torch.Tensor) -> bool:
    return bool(torch.allclose(sample[:, 0], sample[:, 1]) and torch.allclose(sample[:, 1], sample[:, 2]))


def test_len_and_paths(colour_folder: Path) -> None:
    images = PenaltyImages(colour_folder, (8, 12))
    assert len(images) == len(COLOURS)
    assert all(path.suffix == ".png" for path in images.paths)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PenaltyImages(tmp_path / "missing", (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images") as error:
        PenaltyImages(tmp_path / "empty", (8, 8))
    assert str(tmp_path / "empty") in str(error.value)


def test_sample_shape_rectangular(colour_folder: Path) -> None:
    images = PenaltyImages(colour_folder, (8, 14))
    sample = images.sample(step=0, seed=0)
    assert sample.dtype == torch.float32
    assert tuple(sample.shape) == (1, 3, 8, 14)
    assert sample.min() >= 0 and sample.max() <= 1


def test_same_step_and_seed_same_sample(colour_folder: Path) -> None:
    first = PenaltyImages(colour_folder, (8, 12))
    second = PenaltyImages(colour_folder, (8, 12))  # a new instance, as after resuming a run
    for step in (0, 1, 17, 123_456):
        assert torch.equal(first.sample(step, seed=42), second.sample(step, seed=42))
    torch.manual_seed(0)
    reference = first.sample(5, seed=1)
    torch.manual_seed(99)  # the global RNG does not matter
    torch.rand(10)
    assert torch.equal(first.sample(5, seed=1), reference)


def test_different_steps_and_seeds_draw_different_images(colour_folder: Path) -> None:
    images = PenaltyImages(colour_folder, (8, 12))
    draws = [_colour_of(images.sample(step, seed=0)) for step in range(20)]
    assert len(set(draws)) >= 4
    other_seed = [_colour_of(images.sample(step, seed=1)) for step in range(20)]
    assert other_seed != draws


def test_draws_cover_the_folder_and_about_30_percent_are_gray(colour_folder: Path) -> None:
    images = PenaltyImages(colour_folder, (4, 6))
    colours: set[tuple[int, int, int]] = set()
    gray = 0
    num_draws = 200
    for step in range(num_draws):
        sample = images.sample(step, seed=3)
        if _is_gray(sample):
            gray += 1
        else:
            colour = _colour_of(sample)
            assert colour in COLOURS
            colours.add(colour)
    assert GRAYSCALE_PROBABILITY == 0.3
    assert 0.2 <= gray / num_draws <= 0.4
    assert colours == set(COLOURS)


def test_grayscale_uses_luminance(tmp_path: Path) -> None:
    Image.new("RGB", (6, 6), (255, 0, 0)).save(tmp_path / "red.png")
    images = PenaltyImages(tmp_path, (4, 4))
    samples = [images.sample(step, seed=0) for step in range(30)]
    grays = [sample for sample in samples if _is_gray(sample)]
    colours = [sample for sample in samples if not _is_gray(sample)]
    assert grays and colours
    for sample in grays:  # ITU-R 601-2 luma of pure red: 0.299
        assert torch.allclose(sample, torch.full_like(sample, 0.299), atol=2e-3)
    for sample in colours:
        assert _colour_of(sample) == (255, 0, 0)


def test_crop_is_the_centre_of_the_2x_resized_image(tmp_path: Path) -> None:
    # 20 x 32 image, centre red and border blue; image_size (20, 32): resize to 40 x 64 and crop the centre
    # 20 x 32, which is the original's rows 5-15 and columns 8-24, all inside the red region.
    array = np.zeros((20, 32, 3), dtype=np.uint8)
    array[...] = (0, 0, 255)
    array[3:17, 6:26] = (255, 0, 0)
    Image.fromarray(array).save(tmp_path / "centre.png")
    images = PenaltyImages(tmp_path, (20, 32))
    seen_colour = False
    for step in range(10):
        sample = images.sample(step, seed=0)
        assert tuple(sample.shape) == (1, 3, 20, 32)
        if not _is_gray(sample):
            assert _colour_of(sample) == (255, 0, 0)  # no blue border in the crop
            seen_colour = True
    assert seen_colour


def test_resize_ignores_the_aspect_ratio_before_the_centre_crop(tmp_path: Path) -> None:
    # A 4 x 32 source of eight 4 px wide vertical bands; image_size (8, 16): resized to 16 x 32 (only stretched
    # vertically), the centre 8 x 16 crop is source columns 8-23, i.e. bands 2, 3, 4 and 5, each 4 px wide.
    array = np.concatenate([np.full((4, 4, 3), colour, dtype=np.uint8) for colour in COLOURS], axis=1)
    Image.fromarray(array).save(tmp_path / "bands.png")
    images = PenaltyImages(tmp_path, (8, 16))
    for step in range(10):
        sample = images.sample(step, seed=0)
        if not _is_gray(sample):
            for band in range(4):
                assert _colour_of(sample[..., 4 * band : 4 * band + 4]) == COLOURS[band + 2]
            return
    pytest.fail("no colour sample in 10 draws")


def test_bundled_penalty_set_ships_readable_photos_with_their_sources() -> None:
    from efficientad_plugin.penalty import BUNDLED, BUNDLED_FOLDER

    images = PenaltyImages(BUNDLED, (256, 256))
    assert images.folder == BUNDLED_FOLDER
    assert len(images) == 60
    assert "public domain" in (BUNDLED_FOLDER / "SOURCES.md").read_text()
    assert images.sample(0, 0).shape == (1, 3, 256, 256)
