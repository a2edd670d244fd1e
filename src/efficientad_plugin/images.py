"""Reading user images of any common mode into RGB tensors, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
# What Pillow raises for a file it cannot decode; DecompressionBombError (not an OSError) for absurd pixel counts.
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def list_images(folder: str | Path) -> list[Path]:
    """All image files below ``folder`` (nested or flat), sorted; raise if the folder is missing or has none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        msg = f"Image folder {folder} does not exist or is not a directory."
        raise FileNotFoundError(msg)
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
    if not paths:
        msg = f"Image folder {folder} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)."
        raise FileNotFoundError(msg)
    return paths


def read_rgb(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a float RGB tensor ``[3, H, W]`` in [0, 1].

    Gray, palette, RGBA and 16-bit images are converted (16-bit by their full range). Pixels are used as stored,
    EXIF orientation ignored, as anomalib's reader does in training: inference must see what training saw.
    """
    try:
        with Image.open(path) as image:
            if image.mode in SIXTEEN_BIT_MODES:
                array = np.asarray(image, dtype=np.float32)
                # Pillow opens 16-bit PNGs as "I;16" (older releases as "I"): 16-bit unless values say otherwise.
                array /= 65535.0 if image.mode != "I" or array.max(initial=0) <= 65535 else float(2**31 - 1)
                return torch.from_numpy(array.clip(0, 1)).expand(3, -1, -1).contiguous()
            array = np.asarray(image.convert("RGB"))
    except DECODE_ERRORS as error:
        msg = f"Cannot read image {path}: {error}. Remove or replace the file."
        raise ImageReadError(msg) from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
