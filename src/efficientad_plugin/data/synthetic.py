"""Deterministic synthetic dataset in the MVTec AD folder layout (numpy + PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

_PART_COLOUR = np.array([0.45, 0.55, 0.40], dtype=np.float32)[:, None, None]  # base RGB of the textured part
_BACKGROUND = np.array([0.12, 0.12, 0.15], dtype=np.float32)[:, None, None]  # flat background around the part
_SPOT_COLOURS = np.array([[0.95, 0.10, 0.10], [0.10, 0.20, 0.95], [0.95, 0.85, 0.05]])


_MAX_SHIFT = 3  # per-image random shift of the part, in pixels


def _base_image(height: int, width: int) -> np.ndarray:
    """Noise-free textured part on a dark background, padded by the max shift; float (3, H', W')."""
    pad = _MAX_SHIFT
    scale = min(height, width)
    y = np.arange(-pad, height + pad, dtype=np.float32)[:, None]
    x = np.arange(-pad, width + pad, dtype=np.float32)[None, :]
    u, v = x / scale, y / scale
    # Woven texture: product of two fixed-frequency waves plus a diagonal ripple.
    weave = np.sin(2 * np.pi * 12 * u) * np.sin(2 * np.pi * 12 * v)
    ripple = np.sin(2 * np.pi * (4 * u + 6 * v))
    texture = 0.18 * weave + 0.07 * ripple
    part = _PART_COLOUR + texture * np.array([1.0, 0.8, 1.2], dtype=np.float32)[:, None, None]
    inside = (np.abs(y - (height - 1) / 2) < 0.4 * height) & (np.abs(x - (width - 1) / 2) < 0.4 * width)
    return np.where(inside, part, _BACKGROUND)


def _normal_image(rng: np.random.Generator, base: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop of ``base`` shifted by a few random pixels, plus mild Gaussian noise; float (3, H, W)."""
    dy, dx = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2)
    crop = base[:, _MAX_SHIFT - dy : _MAX_SHIFT - dy + height, _MAX_SHIFT - dx : _MAX_SHIFT - dx + width]
    return crop + 0.015 * rng.standard_normal(crop.shape, dtype=np.float32)


def _defect_mask(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Random local defect in the central region; returns (boolean mask, RGB colour)."""
    scale = min(height, width)
    cy = rng.uniform(0.25, 0.75) * height
    cx = rng.uniform(0.25, 0.75) * width
    y, x = np.ogrid[0:height, 0:width]
    kind = int(rng.integers(0, 3))
    if kind == 0:  # irregular dark blob
        radius = rng.uniform(0.07, 0.11) * scale
        angle = np.arctan2(y - cy, x - cx)
        wobble = 1.0 + 0.25 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
        mask = np.hypot(y - cy, x - cx) < radius * wobble
        colour = np.array([0.05, 0.04, 0.03])
    elif kind == 1:  # bright scratch: thick line segment
        theta = rng.uniform(0, np.pi)
        half_len = rng.uniform(0.15, 0.22) * scale
        half_thick = max(1.5, 0.015 * scale)
        along = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        across = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        mask = (np.abs(along) < half_len) & (np.abs(across) < half_thick)
        colour = np.array([0.97, 0.97, 0.97])
    else:  # saturated colour spot (ellipse)
        ry, rx = rng.uniform(0.05, 0.09, size=2) * scale
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1.0
        colour = _SPOT_COLOURS[int(rng.integers(0, len(_SPOT_COLOURS)))]
    return mask, colour


def _save_rgb(image: np.ndarray, path: Path) -> None:
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=1)


def generate_mvtec_dataset(
    root: str | Path,
    category: str = "synthetic",
    image_size: tuple[int, int] = (256, 256),
    num_train: int = 20,
    num_test_good: int = 5,
    num_test_defect: int = 5,
    seed: int = 0,
) -> Path:
    """Write a small MVTec-AD-style dataset with pixel masks and return ``root / category``.

    Normal images show one fixed woven texture (small random shift, mild noise); defect
    images add one local blob, scratch or colour spot whose exact pixels form the mask.
    ``image_size`` is ``(height, width)``. Same arguments give byte-identical files;
    existing files with the same names are overwritten.
    """
    height, width = image_size
    rng = np.random.default_rng(seed)
    base = _base_image(height, width)
    out = Path(root) / category
    dirs = {name: out / name for name in ("train/good", "test/good", "test/defect", "ground_truth/defect")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train/good", num_train), ("test/good", num_test_good)):
        for i in range(count):
            _save_rgb(_normal_image(rng, base, height, width), dirs[split] / f"{i:03d}.png")
    for i in range(num_test_defect):
        image = _normal_image(rng, base, height, width)
        mask, colour = _defect_mask(rng, height, width)
        image[:, mask] = colour[:, None] + 0.015 * rng.standard_normal((3, int(mask.sum())), dtype=np.float32)
        _save_rgb(image, dirs["test/defect"] / f"{i:03d}.png")
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
        mask_img.save(dirs["ground_truth/defect"] / f"{i:03d}_mask.png", compress_level=1)
    return out
