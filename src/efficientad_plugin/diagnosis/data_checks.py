"""Data checks before training: counts, unusable files and formats, duplicates, leakage, validation, resize."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from ..input_checks import ImageFacts, image_problem, mask_problem, parse_val_split_mode
from ..teacher_weights import sha256_of
from .dataset import Dataset, DatasetImage
from .findings import Section, Severity

MIN_NORMAL_IMAGES = 50  # below this the student and autoencoder see too little normal variation
MAX_STRETCH = 0.10  # aspect-ratio change by the resize above which parts look visibly distorted
ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
LISTED = 5  # files named in a message; the JSON lists them all


@dataclass(frozen=True)
class ImageInfo:
    """One file: its content hash, its facts when it decodes, and why training would refuse it or its mask."""

    image: DatasetImage
    sha256: str
    facts: ImageFacts | None
    problem: str | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """``(height, width)`` as stored, ``None`` if the file does not decode."""
        return None if self.facts is None else (self.facts.height, self.facts.width)


def inspect_images(images: Sequence[DatasetImage]) -> list[ImageInfo]:
    """Hash and decode every image and mask with the checks training runs first, keeping each problem."""
    infos = []
    for image in images:
        problem, facts = image_problem(image.path)
        if problem is None and facts is not None and image.mask is not None:
            mask_error = mask_problem(image.mask, facts)
            problem = None if mask_error is None else f"mask {image.mask.name}: {mask_error}"
        infos.append(ImageInfo(image, sha256_of(image.path), facts, problem))
    return infos


def _names(images: Sequence[DatasetImage]) -> str:
    more = f" and {len(images) - LISTED} more" if len(images) > LISTED else ""
    return ", ".join(str(image.path) for image in images[:LISTED]) + more


def _images(infos: Sequence[ImageInfo]) -> list[DatasetImage]:
    return [info.image for info in infos]


def check_counts(section: Section, dataset: Dataset) -> None:
    """Images per split and defect type; too few normal training images; splits the report cannot judge."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for image in dataset.images:
        counts[image.split][image.defect_type] += 1
    section.facts["counts"] = {split: dict(sorted(types.items())) for split, types in counts.items()}
    normal = len(dataset.split("train", 0))
    if normal == 0:
        section.add(Severity.ERROR, "normal images", "There are no normal training images.",
                    "Put images of defect-free parts in <category>/train/good.")
    elif normal < MIN_NORMAL_IMAGES:
        section.add(Severity.WARNING, "normal images",
                    f"Only {normal} normal training images: the student and the autoencoder learn the normal "
                    f"variation of the parts from these alone.",
                    f"Collect at least {MIN_NORMAL_IMAGES}, better a few hundred (the paper's categories have "
                    f"60-400), covering lighting, position and batch variation.")
    if dataset.split("train", 1):
        section.add(Severity.WARNING, "defects in training",
                    f"{len(dataset.split('train', 1))} training images sit in defect folders: "
                    f"{_names(dataset.split('train', 1))}.",
                    "Train on normal images only: move them to test/<defect type>.")
    if not dataset.split("test", 0) or not dataset.split("test", 1):
        section.add(Severity.INFO, "test split",
                    "The test split lacks normal or defective images: AUROC and the score checks need both.",
                    "Add test/good and test/<defect type> folders (with ground_truth masks for pixel metrics).")


def check_formats(section: Section, infos: Sequence[ImageInfo]) -> None:
    """Files training refuses (corrupt, 16-bit, tiny, bad masks); alpha, EXIF rotation, mixed channels and sizes."""
    unusable = [info for info in infos if info.problem]
    section.facts["unusable"] = {str(info.image.path): info.problem for info in unusable}
    if unusable:
        listed = "; ".join(f"{info.image.path}: {info.problem}" for info in unusable[:LISTED])
        section.add(Severity.ERROR, "unusable files",
                    f"{len(unusable)} files cannot be used: {listed}{'; ...' if len(unusable) > LISTED else ''}",
                    "Fix or remove each file as its entry says; EfficientAdPlugin refuses to train until all are "
                    "usable, and anomalib's test run stops at the first unreadable one.")
    readable = [info for info in infos if info.facts]
    section.facts["modes"] = dict(Counter(info.facts.mode for info in readable))
    section.facts["sizes"] = {f"{h}x{w}": n for (h, w), n in Counter(info.size for info in readable).most_common()}
    rotated = [info for info in readable if info.facts.exif_rotated]
    if rotated:
        section.add(Severity.INFO, "EXIF orientation",
                    f"{len(rotated)} images carry an EXIF orientation tag ({_names(_images(rotated))}); training "
                    f"and inference use the pixels as stored, so parts may lie rotated against a photo viewer's view.",
                    "Store every image upright the same way (rotate the pixels, drop the tag).")
    alpha = [info for info in readable if info.facts.mode in ALPHA_MODES]
    if alpha:
        section.add(Severity.WARNING, "alpha channel",
                    f"{len(alpha)} images have an alpha channel ({_names(_images(alpha))}); it is dropped, and the "
                    f"colour under transparent pixels becomes visible background.",
                    "Flatten them onto one fixed background colour before training and inspection.")
    train_modes = {info.facts.mode for info in readable if info.image.split == "train"}
    test_modes = {info.facts.mode for info in readable if info.image.split != "train"}
    gray = {"L", "1"}
    if train_modes and test_modes and (train_modes <= gray) != (test_modes <= gray):
        section.add(Severity.WARNING, "mixed channels",
                    f"Training images are {sorted(train_modes)} but validation/test images {sorted(test_modes)}: "
                    f"colour present in one set only is itself an anomaly to the model.",
                    "Capture every split with the same camera settings, or convert all of them to gray.")
    if len(section.facts["sizes"]) > 1:
        section.add(Severity.WARNING, "mixed sizes",
                    f"Images come in {len(section.facts['sizes'])} sizes: the resize scales parts differently.",
                    "Crop all images to the same field of view (or the same size) before training.")


def check_duplicates(section: Section, infos: Sequence[ImageInfo]) -> None:
    """Identical files (sha256 of the bytes) within a split, and across training, validation and test (leakage)."""
    groups: dict[str, list[ImageInfo]] = defaultdict(list)
    for info in infos:
        groups[info.sha256].append(info)
    duplicates = [group for group in groups.values() if len(group) > 1]
    section.facts["duplicate_groups"] = [[str(info.image.path) for info in group] for group in duplicates]
    within = [group for group in duplicates if len({info.image.split for info in group}) == 1]
    if within:
        section.add(Severity.WARNING, "duplicates",
                    f"{len(within)} sets of identical files within a split, e.g. "
                    f"{' = '.join(str(info.image.path) for info in within[0])}.",
                    "Delete the copies: they over-weight those parts in training or inflate test metrics.")
    for first, second, what in (("train", "test", "training"), ("val", "test", "validation")):
        shared = [group for group in duplicates if {first, second} <= {info.image.split for info in group}]
        if shared:
            section.add(Severity.ERROR, "test leakage",
                        f"{len(shared)} test images are also {what} images (identical files), e.g. "
                        f"{' = '.join(str(info.image.path) for info in shared[0])}: test metrics are optimistic.",
                        f"Remove the test images from the {what} folder.")


def check_validation_split(section: Section, val_split_mode: str | None) -> None:
    """Where the config takes the validation images (the map normalisation is fitted on them) from."""
    section.facts["val_split_mode"] = val_split_mode
    parsed = parse_val_split_mode(val_split_mode)
    mode = "" if parsed is None else parsed.value
    if mode == "same_as_test":
        section.add(Severity.ERROR, "validation split",
                    "val_split_mode is same_as_test: the map normalisation and thresholds are fitted on the test "
                    "images, so test metrics are optimistic and the threshold does not transfer to the line.",
                    "Set data.init_args.val_split_mode: from_train with val_split_ratio: 0.1 (the paper's choice).")
    elif mode in {"from_test", "synthetic"}:
        section.add(Severity.WARNING, "validation split",
                    f"val_split_mode is {mode}: the normalisation is fitted on test-derived or synthetic images, "
                    f"not on held-out normal training images as in the paper.",
                    "Set data.init_args.val_split_mode: from_train with val_split_ratio: 0.1.")
    elif mode == "none":
        section.add(Severity.ERROR, "validation split", "val_split_mode is none: EfficientAdPlugin refuses to train.",
                    "Set data.init_args.val_split_mode: from_train with val_split_ratio: 0.1.")


def _suggested_size(aspect: float, image_size: tuple[int, int]) -> tuple[int, int]:
    """An ``image_size`` with the images' aspect ratio, the shorter side kept, both multiples of 8."""
    short = min(image_size)
    height, width = (short, short * aspect) if aspect >= 1 else (short / aspect, short)
    return int(round(height / 8) * 8), int(round(width / 8) * 8)


def check_resize(section: Section, infos: Sequence[ImageInfo], image_size: tuple[int, int]) -> None:
    """How the resize to ``image_size`` stretches (aspect ratio) and shrinks the images."""
    sizes = [info.size for info in infos if info.size]
    if not sizes:
        return
    aspect = median(width / height for height, width in sizes)
    stretch = abs(math.log(aspect / (image_size[1] / image_size[0])))
    shrink = median(min(height / image_size[0], width / image_size[1]) for height, width in sizes)
    section.facts["resize"] = {"median_aspect_w_over_h": round(aspect, 3),
                               "stretch": round(math.exp(stretch) - 1, 3), "median_shrink": round(shrink, 2)}
    if stretch > math.log1p(MAX_STRETCH):
        section.add(Severity.WARNING, "resize distortion",
                    f"The images' aspect ratio (w/h {aspect:.2f}) differs from image_size {list(image_size)}: the "
                    f"resize stretches parts by {math.exp(stretch) - 1:.0%}.",
                    f"Set --model.image_size {list(_suggested_size(aspect, image_size))} (same aspect ratio; "
                    f"rectangular sizes work) or crop the images to the model's aspect ratio.")
    if shrink > 4:
        section.add(Severity.INFO, "resize shrink",
                    f"Images are shrunk about {shrink:.1f}x to image_size: details smaller than {shrink:.0f} "
                    f"camera pixels become sub-pixel.",
                    "Check the defect sizes below; if defects are small, raise image_size or tile the images.")
    elif shrink < 1:
        section.add(Severity.INFO, "resize upscale",
                    f"Images are enlarged {1 / shrink:.1f}x to image_size: this adds computation, not detail.",
                    "Use an image_size at the images' own resolution (at least 256 per side).")
