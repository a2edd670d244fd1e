"""Defect sizes from the ground-truth masks, in model pixels, against the PDN's 33x33-pixel patch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..pdn import PATCH_SIDE
from .dataset import DatasetImage
from .figures import histogram_png
from .findings import Figure, Section, Severity

TINY_SIDE = 8  # a defect below ~1/16 of the patch's area hardly moves the patch's descriptor
TINY_SHARE = 0.25  # warn when this share of defects is tiny
MAX_IMAGE_SIDE = 1024  # above this, tiling is cheaper than a larger image_size on the PDN


def defect_sides(mask_path: str, image_size: tuple[int, int] | None) -> list[float]:
    """Each connected defect region's equivalent square side (sqrt of area) at ``image_size``, in model pixels
    (``None``: at the mask's own size)."""
    with Image.open(mask_path) as mask:
        pixels = np.asarray(mask.convert("L")) > 0
    regions, count = ndimage.label(pixels)
    if not count:
        return []
    areas = np.bincount(regions.ravel())[1:]
    scale = 1.0 if image_size is None else image_size[0] * image_size[1] / pixels.size  # model px per mask px
    return [math.sqrt(area * scale) for area in areas.tolist()]


def _suggested_image_size(sides: Sequence[float], image_size: tuple[int, int]) -> tuple[int, int]:
    """The ``image_size`` at which the 10th-percentile defect reaches ``TINY_SIDE``, rounded up to multiples of 32."""
    factor = TINY_SIDE / max(float(np.percentile(sides, 10)), 1e-3)
    return tuple(int(math.ceil(side * factor / 32) * 32) for side in image_size)


def check_defect_sizes(section: Section, images: Sequence[DatasetImage], image_size: tuple[int, int],
                       native_side: int) -> None:
    """Defect size distribution; tiny or vanishing defects with a larger ``image_size`` or tiling as the remedy.

    ``native_side`` is the camera images' longest side: beyond it a larger ``image_size`` adds no detail.
    """
    defective = [image for image in images if image.label]
    unmasked = [image for image in defective if image.mask is None]
    if unmasked:
        section.add(Severity.INFO, "defect masks",
                    f"{len(unmasked)} of {len(defective)} defective images have no mask: their defect sizes and "
                    f"pixel metrics are unknown.",
                    "Add ground_truth/<defect type>/<name>_mask.png files (white defect on black).")
    sides = [side for image in defective if image.mask is not None for side in defect_sides(str(image.mask),
                                                                                            image_size)]
    if not sides:
        return
    tiny = sum(side < TINY_SIDE for side in sides) / len(sides)
    vanishing = sum(side < 1 for side in sides) / len(sides)
    section.facts["defect_sizes"] = {
        "regions": len(sides), "median_side_px": round(float(np.median(sides)), 1),
        "p10_side_px": round(float(np.percentile(sides, 10)), 1), "tiny_share": round(tiny, 3),
        "sub_pixel_share": round(vanishing, 3), "patch_side_px": PATCH_SIDE, "image_size": list(image_size)}
    section.figures.append(Figure(
        f"Defect regions' equivalent side (sqrt of area) in model pixels at image_size {list(image_size)}; the PDN "
        f"describes {PATCH_SIDE}x{PATCH_SIDE}-pixel patches.",
        histogram_png({"defect regions": sides}, "equivalent side [model px]",
                      {f"tiny (< {TINY_SIDE} px)": TINY_SIDE, f"PDN patch ({PATCH_SIDE} px)": PATCH_SIDE},
                      log_x=True)))
    _recommend_native_mode(section, defective, sides, image_size)
    if tiny < TINY_SHARE and not vanishing:
        return
    suggested = _suggested_image_size(sides, image_size)
    if max(suggested) > native_side:
        remedy = (f"Defects are small even in the camera images ({list(suggested)} px would be needed): train and "
                  f"infer on tiles of {list(image_size)} camera pixels (no shrink), or image the parts closer.")
    elif max(suggested) > MAX_IMAGE_SIDE:
        remedy = (f"Tile the images: cut each into tiles of about {list(image_size)} camera pixels (or crop to the "
                  f"part), train and infer per tile; a larger image_size alone would need {list(suggested)}.")
    else:
        remedy = f"Set --model.image_size {list(suggested)} so that most defects span at least {TINY_SIDE} px."
    severity = Severity.ERROR if vanishing >= 0.1 else Severity.WARNING
    section.add(severity, "tiny defects",
                f"{tiny:.0%} of {len(sides)} defect regions are under {TINY_SIDE}x{TINY_SIDE} model pixels "
                f"({vanishing:.0%} under one pixel) at image_size {list(image_size)}, against the PDN's "
                f"{PATCH_SIDE}x{PATCH_SIDE} patch: they barely change its features.", remedy)


def _recommend_native_mode(section: Section, defective: Sequence[DatasetImage], sides: Sequence[float],
                           image_size: tuple[int, int]) -> None:
    """Native-resolution mode (``local_size``) when the median defect is below the patch at ``image_size`` but the
    camera images hold more pixels: at the local size where 90 % of the defects span the patch, or native."""
    median = float(np.median(sides))
    if median >= PATCH_SIDE:
        return
    masks = [str(image.mask) for image in defective if image.mask is not None]
    native_sides = [side for mask in masks for side in defect_sides(mask, None)]
    native_median = float(np.median(native_sides))
    if native_median < median * 1.25:  # the camera images are hardly larger than image_size: little to gain
        return
    with Image.open(masks[0]) as mask:
        width, height = mask.size
    scale = PATCH_SIDE / float(np.percentile(native_sides, 10))
    if scale >= 1:
        setting, how = "native", "the smaller defects need every camera pixel"
    else:
        local = [max(minimum, int(math.ceil(side * scale / 32) * 32)) for side, minimum in
                 zip((height, width), image_size, strict=True)]
        setting = f"{local}"
        how = f"at {local} px (x{scale:.2f} of the camera's {height}x{width}) 90 % of the defects span the patch"
        if local[0] >= height and local[1] >= width:
            setting = "native"
    section.facts["native_mode"] = {"median_side_px_at_image_size": round(median, 1),
                                    "median_side_px_native": round(native_median, 1), "local_size": setting}
    section.add(Severity.WARNING, "native resolution",
                f"The median defect spans {median:.0f} px at image_size {list(image_size)} but {native_median:.0f} "
                f"px in the camera images, against the PDN's {PATCH_SIDE}x{PATCH_SIDE} patch; {how}.",
                f"Train in native-resolution mode: --model.local_size {setting} (the student trains on "
                f"{list(image_size)} crops, the whole image is scored at that size; docs/native_resolution.md).")
