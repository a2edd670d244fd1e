"""Checks of every image and mask before training: a bad file stops the run at once, by name, not hours later."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from anomalib.data.utils import ValSplitMode
from PIL import Image

from .images import DECODE_ERRORS, SIXTEEN_BIT_MODES, ImageReadError
from .pdn import PATCH_SIDE

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112
_MAX_LISTED = 20
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageFacts:
    """What the checks need to know of a decodable file."""

    width: int
    height: int
    mode: str
    exif_rotated: bool


def parse_val_split_mode(value: object) -> ValSplitMode | None:
    """anomalib's ``ValSplitMode`` from a member, ``"from_train"`` or ``"ValSplitMode.FROM_TRAIN"``; ``None`` if unset.

    Configs and datamodules hold the mode in all three forms; the model and the diagnosis read it here.
    """
    if value is None or value == "":
        return None
    if isinstance(value, ValSplitMode):
        return value
    name = str(value).rpartition(".")[-1].lower()
    try:
        return ValSplitMode(name)
    except ValueError:
        valid = ", ".join(mode.value for mode in ValSplitMode)
        msg = f"val_split_mode {value!r} is not one of anomalib's modes: {valid}."
        raise ValueError(msg) from None


def inspect_image(path: str | Path) -> ImageFacts:
    """Decode ``path`` completely (so a truncated file fails here) and return its facts; raise ``ImageReadError``."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            facts = ImageFacts(image.width, image.height, image.mode, orientation not in (None, 1))
            # JPEGs decode at 1/8 scale: the whole stream is still read, so truncation is found, 8x faster.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DECODE_ERRORS as error:
        msg = f"Cannot read image {path}: {error}. Remove or replace the file."
        raise ImageReadError(msg) from error
    return facts


def image_problem(path: str | Path, decode_only: bool = False) -> tuple[str | None, ImageFacts | None]:
    """Why ``path`` cannot be a training image (``None`` if it can), with its facts when it decodes.

    ``decode_only`` is for files this package reads and resizes itself (the penalty set): ``images.read_rgb``
    scales 16 bits correctly, and any size works.
    """
    try:
        facts = inspect_image(path)
    except ImageReadError as error:
        return str(error.__cause__ or error), None
    if decode_only:
        return None, facts
    if facts.mode in SIXTEEN_BIT_MODES:
        return (f"{facts.mode} (16-bit) image: anomalib's reader saturates values above 255 to white. Convert it to "
                f"8-bit (divide by 257) before training."), facts
    if min(facts.width, facts.height) < PATCH_SIDE:
        return (f"{facts.width}x{facts.height} pixels, smaller than one {PATCH_SIDE}-pixel PDN patch: not a "
                f"usable image of a part; remove it."), facts
    return None, facts


def mask_problem(mask_path: str | Path, image: ImageFacts) -> str | None:
    """Why ``mask_path`` cannot be the mask of an image with facts ``image`` (``None`` if it can)."""
    try:
        mask = inspect_image(mask_path)
    except ImageReadError as error:
        return str(error.__cause__ or error)
    if (mask.width, mask.height) != (image.width, image.height):
        return (f"mask is {mask.width}x{mask.height} but its image is {image.width}x{image.height}: a resized "
                f"mask would mark the wrong pixels. Save the mask at the image's size.")
    return None


def check_samples(samples: Iterable[tuple[str, str | None]], decode_only: bool = False) -> dict[str, tuple[int, int]]:
    """Check ``(image_path, mask_path)`` pairs; raise one ``ImageReadError`` listing every bad file; return each
    image's ``(height, width)``.

    Each path is checked once. Images with an EXIF orientation tag are logged: anomalib (and this package at
    inference) uses their pixels as stored, so parts appear as stored, not as a photo viewer shows them.
    """
    problems: dict[str, str] = {}
    rotated: list[str] = []
    checked: dict[str, ImageFacts | None] = {}
    start = time.perf_counter()
    for image_path, mask_path in samples:
        image_path = str(image_path)
        if image_path not in checked:
            problem, checked[image_path] = image_problem(image_path, decode_only)
            if problem:
                problems[image_path] = problem
            elif checked[image_path].exif_rotated:
                rotated.append(image_path)
        facts = checked[image_path]
        if mask_path and facts is not None and str(mask_path) not in problems:
            if problem := mask_problem(mask_path, facts):
                problems[str(mask_path)] = problem
    logger.info("Checked %d images in %.1f s.", len(checked), time.perf_counter() - start)
    if rotated:
        logger.warning("%d images have an EXIF orientation tag, which is ignored (pixels are used as stored), e.g. "
                       "%s.", len(rotated), rotated[0])
    if problems:
        listed = "\n".join(f"  {path}: {problem}" for path, problem in list(problems.items())[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        msg = (f"{len(problems)} input files cannot be used; fix or remove them before training (nothing was "
               f"trained):\n{listed}{more}")
        raise ImageReadError(msg)
    return {path: (facts.height, facts.width) for path, facts in checked.items() if facts is not None}


def datamodule_samples(datamodule: object) -> list[tuple[str, str | None]]:
    """The ``(image_path, mask_path)`` pairs of an anomalib datamodule's train, validation and test splits."""
    pairs = []
    for split in _SPLITS:
        samples = getattr(getattr(datamodule, f"{split}_data", None), "samples", None)
        if samples is None:
            continue
        masks = samples["mask_path"] if "mask_path" in samples else [None] * len(samples)
        pairs.extend((image, mask if isinstance(mask, str) and mask else None)
                     for image, mask in zip(samples["image_path"], masks, strict=True))
    return pairs


def check_datamodule(datamodule: object) -> dict[str, tuple[int, int]]:
    """Before training: the training split is not empty, and every image and mask of every split can be used;
    returns each image's ``(height, width)``."""
    train_data = getattr(datamodule, "train_data", None)
    if train_data is not None and len(train_data) == 0:
        where = ", ".join(f"{name}={getattr(datamodule, name)}" for name in ("root", "category", "normal_dir")
                          if getattr(datamodule, name, None) is not None)
        msg = (f"{type(datamodule).__name__} found no training images ({where}). Check that the folder of normal "
               f"training images exists and holds image files.")
        raise ValueError(msg)
    return check_samples(datamodule_samples(datamodule))


def check_one_size_per_batch(sizes: dict[str, tuple[int, int]], batch_size: int) -> None:
    """Images of different sizes cannot share a batch (anomalib stacks them): refuse, naming two, unless it is 1."""
    by_size = {size: path for path, size in sizes.items()}
    if batch_size > 1 and len(by_size) > 1:
        (first, first_path), (second, second_path) = list(by_size.items())[:2]
        msg = (f"Native-resolution mode scores each image at its own size, and the images differ in size (e.g. "
               f"{first_path} is {first[0]}x{first[1]}, {second_path} {second[0]}x{second[1]}): set "
               f"--data.eval_batch_size 1, or local_size [h, w] to score them all at one size.")
        raise ValueError(msg)
