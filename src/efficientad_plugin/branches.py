"""How much weight the local (student-teacher) and global (autoencoder) maps get: the paper's, or chosen from normals.

The paper averages both normalised maps (0.5 / 0.5). On a CPU budget the autoencoder may not have learnt yet: its
map is then noise, and averaging it in lowers the detection of the local map (issue 27: magnetic_tile, local 0.76
image AUROC, global 0.46, average 0.68 after 1,000 steps). ``auto`` decides per model from its normal validation
images only, never from real defects or the test split:

1. The autoencoder counts as learnt once it explains at least half of the normalised teacher features' variance on
   the normal validation images; then the paper's 0.5 / 0.5 holds.
2. Otherwise the global map has to show that it carries signal: the normal validation images and a synthetic
   anomaly made from each (anomalib's Perlin generator, as DRAEM uses; seeded) are scored by the local map alone,
   the global map alone and the paper's average (maximum of each map). The local map alone is kept unless the
   average separates the synthetic anomalies better by more than ``MARGIN`` (then the average), or the global map
   alone beats both by more than ``MARGIN`` (then the global map alone).

The burden of proof lies on the global map because, before it has learnt, its map is the autoencoder's ignorance
rather than a measurement, and because synthetic anomalies saturate: on deeppcb_mini after 2,200 steps the local
map and the average both separated them at 0.985 while on real defects the local map reached 0.696 image AUROC
and the average 0.560 (docs/benchmarks.md).

anomalib has no such rule; the generator is anomalib's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch

from .anomaly_map import PAPER_BRANCH_WEIGHTS

BRANCH_WEIGHTS = ("paper", "auto")
# Explained variance of the normalised teacher features from which the autoencoder counts as learnt: it then
# reproduces most of what the teacher sees, and its map measures logical deviations rather than its own ignorance.
AUTOENCODER_LEARNT = 0.5
# By how much synthetic image AUROC a weighting must beat the local map alone to give the unlearnt global map weight:
# with 50-100 validation images (and as many synthetic ones) 0.01 is 25-100 of the N^2 normal/anomalous pairs
# ordered the other way, inside what another seed of the synthetic anomalies moves; a smaller gap is a tie.
MARGIN = 0.01
CANDIDATES: dict[str, tuple[float, float]] = {"paper": PAPER_BRANCH_WEIGHTS, "local": (1.0, 0.0), "global": (0.0, 1.0)}
# Fewest normal validation images from which synthetic scores may decide: with n normal and n synthetic images one
# swapped pair moves the AUROC by 1/n^2, and on 2 images a float-rounding difference after a resume flipped the
# choice; below this the paper's average holds.
MIN_VALIDATION_IMAGES = 10
SYNTHETIC_SEED = 20_240_127  # the synthetic anomalies are the same for every fit of the same validation images


@dataclass(frozen=True)
class BranchChoice:
    """The weights of the local and global maps and why: stored in the checkpoint and logged."""

    rule: str  # "paper" or "auto"
    weights: tuple[float, float]  # (local, global)
    reason: str
    explained_variance: tuple[float, float] | None = None  # (student, autoencoder) on the normal validation images
    synthetic_auroc: dict[str, float] | None = None  # "local", "global", "paper" -> image AUROC

    def to_dict(self) -> dict:
        """JSON types (lists, not tuples), for the checkpoint, results files and logs."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping) -> BranchChoice:
        """Inverse of ``to_dict``."""
        values = dict(data)
        values["weights"] = tuple(values["weights"])
        if values.get("explained_variance") is not None:
            values["explained_variance"] = tuple(values["explained_variance"])
        return cls(**values)


def check_branch_weights(rule: str) -> str:
    """Refuse an unknown rule, naming the parameter."""
    if rule not in BRANCH_WEIGHTS:
        msg = f"branch_weights must be one of {', '.join(BRANCH_WEIGHTS)}, got {rule!r}."
        raise ValueError(msg)
    return rule


def choose_branch_weights(rule: str, explained_variance: tuple[float, float] | None,
                          synthetic_auroc: Mapping[str, float] | None,
                          normal_images: int | None = None) -> BranchChoice:
    """The weights ``rule`` gives a model whose branches measured ``explained_variance`` and ``synthetic_auroc``.

    ``explained_variance`` is (student, autoencoder); ``synthetic_auroc`` maps ``local``, ``global`` and ``paper``
    to the image AUROC on ``normal_images`` normal validation images against synthetic anomalies made from them.
    """
    check_branch_weights(rule)
    synthetic = None if synthetic_auroc is None else {name: float(synthetic_auroc[name]) for name in CANDIDATES}
    choice = {"rule": rule, "explained_variance": explained_variance, "synthetic_auroc": synthetic}
    if rule == "paper":
        return BranchChoice(weights=PAPER_BRANCH_WEIGHTS, reason="the paper's average (branch_weights=paper)",
                            **choice)
    if explained_variance is not None and explained_variance[1] >= AUTOENCODER_LEARNT:
        return BranchChoice(weights=PAPER_BRANCH_WEIGHTS, reason=(
            f"the autoencoder has learnt: it explains {explained_variance[1]:.2f} >= {AUTOENCODER_LEARNT} of the "
            f"teacher features' variance on normal validation images, so the paper's average holds"), **choice)
    if synthetic is None:
        return BranchChoice(weights=PAPER_BRANCH_WEIGHTS,
                            reason="no synthetic anomalies could be scored, so the paper's average holds", **choice)
    if normal_images is not None and normal_images < MIN_VALIDATION_IMAGES:
        return BranchChoice(weights=PAPER_BRANCH_WEIGHTS, reason=(
            f"only {normal_images} normal validation images, fewer than the {MIN_VALIDATION_IMAGES} needed to judge "
            f"the maps on synthetic anomalies, so the paper's average holds (hold out more normal images)"),
            **choice)
    learnt = "" if explained_variance is None else (
        f"the autoencoder explains only {explained_variance[1]:.2f} < {AUTOENCODER_LEARNT} of the teacher "
        f"features' variance; ")
    scores = ", ".join(f"{name} {value:.3f}" for name, value in synthetic.items())
    if synthetic["global"] > max(synthetic["local"], synthetic["paper"]) + MARGIN:
        chosen, why = "global", f"the global map alone beats both other weightings by more than {MARGIN}"
    elif synthetic["paper"] > synthetic["local"] + MARGIN:
        chosen, why = "paper", f"the average beats the local map alone by more than {MARGIN} (the global map adds)"
    else:
        chosen, why = "local", f"nothing beats the local map alone by more than {MARGIN}, so the global map stays out"
    return BranchChoice(weights=CANDIDATES[chosen], reason=(
        f"{learnt}on synthetic anomalies of the normal validation images (image AUROC {scores}) {why}"), **choice)


def synthetic_anomalies(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A synthetic anomaly on every image ``[B, 3, H, W]`` in [0, 1]: anomalib's ``PerlinAnomalyGenerator``, seeded.

    The generator draws from torch's global CPU generator; it runs on the CPU inside a forked state of that generator,
    so training's and Lightning's random streams (CPU and GPU) are untouched and the same ``seed`` gives the same
    anomalies.
    """
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: manual_seed would reseed CUDA too
        anomalous, _ = PerlinAnomalyGenerator(probability=1.0)(images.detach().float().cpu())
    return anomalous.clamp(0, 1).to(images)


def image_aurocs(normal: Mapping[str, torch.Tensor], anomalous: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Image AUROC per key of image scores ``[N]`` of normal images against anomalous ones."""
    from .evaluation import auroc

    return {name: auroc(torch.cat([normal[name], anomalous[name]]),
                        torch.cat([torch.zeros(len(normal[name])), torch.ones(len(anomalous[name]))]))
            for name in normal}


def branch_scores(local: torch.Tensor, global_: torch.Tensor) -> dict[str, torch.Tensor]:
    """Image scores (the map's maximum) of the normalised local and global maps ``[B, 1, h, w]`` and of every
    candidate weighting of them."""
    return {name: torch.amax(weights[0] * local + weights[1] * global_, dim=(1, 2, 3)).float().cpu()
            for name, weights in CANDIDATES.items()}


def _into_unit_interval(values: torch.Tensor) -> torch.Tensor:
    """``0.5 + 0.5 x / (1 + |x|)``: order-preserving into (0, 1), in float64 before the float32 the metrics keep.

    torchmetrics' ROC applies a sigmoid to each update whose values leave [0, 1] and not to the others, so
    normalised maps (q_a -> 0, q_b -> 0.1, defects often above 1) from batches with and without such values would be
    ranked on different scales. This map keeps every order (distinct up to |x| of about 4,000 in float32).
    """
    values = values.double()
    return (0.5 + 0.5 * values / (1 + values.abs())).float()


class BranchMetrics:
    """Image AUROC, pixel AUROC and AU-PRO of the local map alone, the global map alone and the paper's average.

    anomalib's metrics (the ones its evaluator uses for the model's own map), fed the unweighted normalised branch
    maps, so that a test reports what each branch detects beside what the model's weighting gives. Not a module:
    its states stay out of the model's checkpoint. Names: ``<local|global|paper>_<image|pixel>_<metric>``.
    """

    def __init__(self) -> None:
        from anomalib.metrics import AUPRO, AUROC

        self.metrics = {name: [AUROC(fields=["pred_score", "gt_label"], prefix=f"{name}_image_"),
                               AUROC(fields=["anomaly_map", "gt_mask"], prefix=f"{name}_pixel_", strict=False),
                               AUPRO(fields=["anomaly_map", "gt_mask"], prefix=f"{name}_pixel_", strict=False)]
                        for name in CANDIDATES}

    def update(self, local: torch.Tensor, global_: torch.Tensor, gt_label: torch.Tensor | None,
               gt_mask: torch.Tensor | None,
               smooth: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Add a batch: normalised maps ``[B, 1, H, W]`` at the image's size, labels ``[B]`` and masks ``[B, H, W]``.

        ``smooth`` (the model's map smoothing) applies to the maps the pixel metrics see; scores are the maxima of
        the unsmoothed maps, as the model's are."""
        if gt_label is None:
            return
        from types import SimpleNamespace

        for name, (first, second) in CANDIDATES.items():
            combined = (first * local + second * global_).detach()
            score = torch.amax(_into_unit_interval(combined.cpu()), dim=(-3, -2, -1))
            pixels = _into_unit_interval((smooth(combined) if smooth else combined).cpu()).squeeze(1)
            # labels and masks as integers: torchmetrics refuses float targets (anomalib's batches hold bool)
            batch = SimpleNamespace(pred_score=score, gt_label=gt_label.cpu().int(),
                                    anomaly_map=pixels,
                                    gt_mask=None if gt_mask is None else gt_mask.cpu().reshape(pixels.shape).int())
            for metric in self.metrics[name]:
                metric.update(batch)

    def compute(self) -> dict[str, float]:
        """Every metric that received data, by name."""
        values = {}
        for metrics in self.metrics.values():
            for metric in metrics:
                value = metric.compute() if metric.update_count else None  # None: no masks (not strict)
                if value is not None:
                    values[metric.name] = float(value)
        return values
