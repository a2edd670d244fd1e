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


def defect_sides(mask_path: str, image_size: tuple[int, int]) -> list[float]:
    """Each connected defect region's equivalent square side (sqrt of area) at ``image_size``, in model pixels."""
    with Image.open(mask_path) as mask:
        pixels = np.asarray(mask.convert("L")) > 0
    regions, count = ndimage.label(pixels)
    if not count:
        return []
    areas = np.bincount(regions.ravel())[1:]
    scale = image_size[0] * image_size[1] / pixels.size  # model pixels per mask pixel
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
