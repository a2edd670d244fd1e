"""Model checks on scored images: score distributions, local vs global map, worst errors, border artefacts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from ..branches import BranchMetrics
from ..evaluation import auroc, defect_mask
from .figures import GalleryItem, gallery_png, histogram_png
from .findings import Figure, Section, Severity
from .scoring import ScoredImage

GALLERY_SIZE = 4
BORDER_BAND = 0.1  # each edge band's width as a share of the image side
BORDER_RATIO = 1.5  # warn when the bands hold this many times their area's share of the anomaly mass
DILUTION = 0.05  # AUROC by which one map alone must beat the combination to count as diluted by the other
POOR_AUROC = 0.9


def _group(scored: ScoredImage) -> str:
    return scored.image.split if scored.image.split == "train" else f"{scored.image.split} {scored.image.defect_type}"


def held_out_normals(scored: Sequence[ScoredImage]) -> list[ScoredImage]:
    """Normal validation and test images; the training images when there are none (then seen in training)."""
    held_out = [item for item in scored if item.image.split != "train" and not item.image.label]
    return held_out or [item for item in scored if not item.image.label]


def _auroc(normal: Sequence[float], defective: Sequence[float]) -> float:
    return auroc(torch.tensor([*normal, *defective]), torch.tensor([0] * len(normal) + [1] * len(defective)))


def check_scores(section: Section, scored: Sequence[ScoredImage], threshold: float | None) -> None:
    """Score histogram per split and defect type; shift of normal test images; overlap; errors at the threshold."""
    groups: dict[str, list[float]] = defaultdict(list)
    for item in scored:
        groups[_group(item)].append(item.score)
    section.facts["scores"] = {name: {"images": len(values), "min": min(values), "median": float(np.median(values)),
                                      "max": max(values)} for name, values in sorted(groups.items())}
    section.figures.append(Figure(
        "Image scores (anomaly-map maximum; 0 = q_a, 0.1 = q_b of normal validation pixels) per split and defect "
        "type. Training images were seen in training (and include the held-out validation share).",
        histogram_png(dict(sorted(groups.items())), "image score", {"threshold": threshold} if threshold else None)))
    reference = [item.score for item in scored if item.image.split == "val" and not item.image.label]
    reference = reference or groups.get("train", [])
    test_good = groups.get("test good", [])
    if reference and test_good and np.median(test_good) > np.percentile(reference, 95):
        section.add(Severity.WARNING, "normal shift",
                    f"Normal test images score higher (median {np.median(test_good):.3g}) than 95 % of the normal "
                    f"training/validation images ({np.percentile(reference, 95):.3g}): the test parts look different "
                    f"from the training parts (lighting, position, surface, batch).",
                    "Train on normal images that cover the variation of the line; compare the false-positive gallery "
                    "with training images.")
    defective = [item.score for item in scored if item.image.split == "test" and item.image.label]
    normal = [item.score for item in held_out_normals(scored) if item.image.split == "test"]
    if not (normal and defective):
        return
    section.facts["image_auroc"] = _auroc(normal, defective)
    if section.facts["image_auroc"] < POOR_AUROC:
        section.add(Severity.WARNING, "separation",
                    f"Normal and defective test images overlap: image AUROC {section.facts['image_auroc']:.3f}.",
                    "Fix the errors and warnings above first (training budget, teacher, defect size, data); the "
                    "galleries below show which images are confused.")
    if threshold is not None:
        section.facts["at_threshold"] = {"false_positives": sum(score > threshold for score in normal),
                                         "false_negatives": sum(score <= threshold for score in defective),
                                         "normal": len(normal), "defective": len(defective)}


def check_branches(section: Section, scored: Sequence[ScoredImage]) -> None:
    """Per defect type: the local map's share at each score's location and AUROC of each map alone."""
    normal = [item for item in held_out_normals(scored) if item.image.split == "test"]
    by_type: dict[str, list[ScoredImage]] = defaultdict(list)
    for item in scored:
        if item.image.label and item.image.split == "test":
            by_type[item.image.defect_type].append(item)
    table = {}
    for defect_type, items in sorted(by_type.items()):
        shares = [item.local_share for item in items]
        row = {"images": len(items), "local_share": float(np.nanmean(shares)) if not np.isnan(shares).all() else None}
        if normal:
            for name, score in (("combined", lambda m: m.score), ("local", lambda m: float(m.local_map.max())),
                                ("global", lambda m: float(m.global_map.max()))):
                row[f"auroc_{name}"] = _auroc([score(m) for m in normal], [score(m) for m in items])
            best = max(("local", "global"), key=lambda name: row[f"auroc_{name}"])
            if row[f"auroc_{best}"] > row["auroc_combined"] + DILUTION:
                other = "global" if best == "local" else "local"
                section.add(Severity.WARNING, "map balance",
                            f"For '{defect_type}' the {best} map alone separates better (AUROC "
                            f"{row[f'auroc_{best}']:.3f}) than the final score ({row['auroc_combined']:.3f}): the "
                            f"{other} map adds noise on these parts.",
                            "Train to the paper's budget (the autoencoder converges slowest); if it persists, look "
                            f"at the {other} map on normal images: parts that vary in layout confuse the global map, "
                            "textures the local one.")
        table[defect_type] = row
    section.facts["maps_per_defect_type"] = table
    tested = [item for item in scored if item.image.split == "test"]
    if any(item.image.label for item in tested) and any(not item.image.label for item in tested):
        section.facts["maps_overall"] = branch_metrics(tested)


def branch_metrics(tested: Sequence[ScoredImage]) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AU-PRO of each map alone, the paper's average and the model's own weighting.

    Pixel metrics use the mask files (a defective image without one counts every pixel as defective).
    """
    shape = tested[0].local_map.shape
    labels = torch.tensor([int(item.image.label) for item in tested])
    metrics = BranchMetrics()
    metrics.update(torch.from_numpy(np.stack([item.local_map for item in tested]))[:, None],
                   torch.from_numpy(np.stack([item.global_map for item in tested]))[:, None], labels,
                   torch.from_numpy(np.stack([defect_mask(item.image, shape) for item in tested])))
    return {**metrics.compute(), "model_image_AUROC": auroc(torch.tensor([item.score for item in tested]), labels),
            "model_weights": list(tested[0].weights)}


def _gallery(items: Sequence[ScoredImage]) -> bytes:
    """The items on one colour scale, up to their highest score, so that each gallery's hot spots show."""
    vmax = max(max(item.score for item in items), 1e-6)
    return gallery_png([GalleryItem(item.pixels, item.anomaly_map, f"{item.image.path.name}\n{item.score:.3g}")
                        for item in items], vmax)


def check_galleries(section: Section, scored: Sequence[ScoredImage]) -> None:
    """The highest-scored normal images and the lowest-scored defective images, with their anomaly maps."""
    normal = sorted(held_out_normals(scored), key=lambda item: item.score, reverse=True)[:GALLERY_SIZE]
    defective = sorted((item for item in scored if item.image.label), key=lambda item: item.score)[:GALLERY_SIZE]
    section.facts["worst_false_positives"] = {str(item.image.path): item.score for item in normal}
    section.facts["worst_false_negatives"] = {str(item.image.path): item.score for item in defective}
    if normal:
        section.figures.append(Figure("Worst false positives: the highest-scored normal images.", _gallery(normal)))
    if defective:
        section.figures.append(Figure("Worst false negatives: the lowest-scored defective images.",
                                      _gallery(defective)))


def border_shares(maps: np.ndarray, band: float = BORDER_BAND) -> tuple[float, float, float]:
    """Of anomaly maps ``[N, H, W]``: the share of positive anomaly mass in the edge bands, the bands' share of the
    area, and the share of maps whose maximum lies in the bands."""
    height, width = maps.shape[-2:]
    rows, columns = max(1, round(band * height)), max(1, round(band * width))
    inside = np.zeros((height, width), dtype=bool)
    inside[rows:height - rows, columns:width - columns] = True
    positive = np.clip(maps, 0, None)
    total = float(positive.sum())
    mass = float(positive[:, ~inside].sum()) / total if total > 0 else 0.0
    maxima = np.argmax(maps.reshape(len(maps), -1), axis=1)
    return mass, float((~inside).mean()), float((~inside.ravel()[maxima]).mean())


def check_border(section: Section, scored: Sequence[ScoredImage]) -> None:
    """Whether normal images' anomaly mass or maxima gather in the edge bands."""
    normal = held_out_normals(scored)
    if not normal:
        return
    mass, area, maxima = border_shares(np.stack([item.anomaly_map for item in normal]))
    section.facts["border"] = {"band": BORDER_BAND, "area_share": area, "anomaly_mass_share": mass,
                               "maxima_share": maxima, "images": len(normal)}
    if mass > BORDER_RATIO * area or maxima > max(0.5, BORDER_RATIO * area):
        section.add(Severity.WARNING, "border artefacts",
                    f"On normal images the outer {BORDER_BAND:.0%} of each side ({area:.0%} of the area) holds "
                    f"{mass:.0%} of the anomaly mass and {maxima:.0%} of the image scores' maxima.",
                    "Crop the images to the part so that fixtures, background and vignetting at the edges do not "
                    "vary, or give the edges a uniform background.")
