"""The branch-weight rule (``branches``): what ``paper`` and ``auto`` choose from explained variances and
synthetic scores, the synthetic anomalies themselves, and the branch metrics."""

from __future__ import annotations

import pytest
import torch

from efficientad_plugin.anomaly_map import PAPER_BRANCH_WEIGHTS, AnomalyMapGenerator
from efficientad_plugin.branches import (
    AUTOENCODER_LEARNT,
    MARGIN,
    MIN_VALIDATION_IMAGES,
    BranchChoice,
    BranchMetrics,
    branch_scores,
    choose_branch_weights,
    image_aurocs,
    synthetic_anomalies,
)

NOISY_GLOBAL = {"local": 0.90, "global": 0.52, "paper": 0.80}


def test_paper_is_always_the_average_whatever_was_measured() -> None:
    for explained, synthetic in (((0.9, 0.1), NOISY_GLOBAL), ((0.1, 0.9), None), (None, None)):
        choice = choose_branch_weights("paper", explained, synthetic)
        assert choice.weights == PAPER_BRANCH_WEIGHTS == (0.5, 0.5)
        assert choice.rule == "paper"


def test_auto_keeps_the_average_once_the_autoencoder_has_learnt() -> None:
    # even where the synthetic anomalies favour the local map: a learnt autoencoder restores the paper's model
    choice = choose_branch_weights("auto", (0.8, AUTOENCODER_LEARNT), NOISY_GLOBAL)
    assert choice.weights == (0.5, 0.5)
    assert "has learnt" in choice.reason


def test_auto_drops_a_global_map_that_separates_synthetic_anomalies_worse() -> None:
    choice = choose_branch_weights("auto", (0.8, AUTOENCODER_LEARNT - 0.01), NOISY_GLOBAL)
    assert choice.weights == (1.0, 0.0)
    assert "stays out" in choice.reason and "0.49" in choice.reason
    assert choice.synthetic_auroc == NOISY_GLOBAL and choice.explained_variance == (0.8, 0.49)


def test_auto_gives_all_weight_to_the_global_map_where_it_separates_best() -> None:
    choice = choose_branch_weights("auto", (0.3, 0.2), {"local": 0.55, "global": 0.75, "paper": 0.70})
    assert choice.weights == (0.0, 1.0)


def test_auto_keeps_the_local_map_alone_on_a_tie_of_saturated_synthetic_scores() -> None:
    # deeppcb_mini after 2,200 steps: both at 0.985 on synthetic anomalies; on real defects local 0.696, average 0.560
    tie = {"local": 0.985, "global": 0.794, "paper": 0.985}
    assert choose_branch_weights("auto", (0.73, 0.004), tie).weights == (1.0, 0.0)


def test_the_global_map_gets_weight_only_beyond_the_margin() -> None:
    within = {"local": 0.80, "global": 0.6, "paper": 0.80 + MARGIN}
    assert choose_branch_weights("auto", (0.3, 0.2), within).weights == (1.0, 0.0)
    beyond = {**within, "paper": 0.80 + 2 * MARGIN}
    choice = choose_branch_weights("auto", (0.3, 0.2), beyond)
    assert choice.weights == (0.5, 0.5) and "global map adds" in choice.reason
    global_within = {"local": 0.80, "global": 0.80 + MARGIN, "paper": 0.75}
    assert choose_branch_weights("auto", (0.3, 0.2), global_within).weights == (1.0, 0.0)


def test_auto_keeps_the_average_when_too_few_normal_images_judge_it() -> None:
    choice = choose_branch_weights("auto", (0.3, 0.2), NOISY_GLOBAL, normal_images=MIN_VALIDATION_IMAGES - 1)
    assert choice.weights == (0.5, 0.5) and "hold out more normal images" in choice.reason
    assert choose_branch_weights("auto", (0.3, 0.2), NOISY_GLOBAL, normal_images=MIN_VALIDATION_IMAGES).weights == (
        1.0, 0.0)


def test_auto_without_synthetic_scores_keeps_the_average() -> None:
    assert choose_branch_weights("auto", (0.3, 0.2), None).weights == (0.5, 0.5)


def test_unknown_rule_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="branch_weights must be one of paper, auto"):
        choose_branch_weights("mean", None, None)


def test_choice_round_trips_through_plain_data() -> None:
    choice = choose_branch_weights("auto", (0.3, 0.2), NOISY_GLOBAL)
    data = choice.to_dict()
    assert torch.load(_saved(data), weights_only=True) == data  # plain types: loads without code
    assert BranchChoice.from_dict(data) == choice


def _saved(data: dict) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return buffer


def test_synthetic_anomalies_change_every_image_the_same_way_for_the_same_seed() -> None:
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    first, second = synthetic_anomalies(images, seed=3), synthetic_anomalies(images, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # training's random stream is untouched
    assert torch.equal(first, second)
    assert not torch.equal(first, synthetic_anomalies(images, seed=4))
    assert first.shape == images.shape and 0 <= float(first.min()) and float(first.max()) <= 1
    changed = (first - images).abs().amax(dim=1) > 1e-6
    assert bool(changed.flatten(1).any(dim=1).all())  # each image has an anomaly
    assert float(changed.float().mean()) < 0.9  # ...on part of it, not everywhere


def test_branch_scores_and_aurocs_follow_the_weights() -> None:
    local = torch.zeros(4, 1, 8, 8)
    global_ = torch.zeros(4, 1, 8, 8)
    local[2:, 0, 3, 3] = 1.0  # the local map finds the two anomalous images
    global_[[0, 2], 0, 5, 5] = 3.0  # the global map fires on one normal and one anomalous image
    scores = branch_scores(local, global_)
    assert scores["local"].tolist() == [0, 0, 1, 1]
    assert scores["global"].tolist() == [3, 0, 3, 0]
    assert scores["paper"].tolist() == [1.5, 0, 1.5, 0.5]
    normal = {name: value[:2] for name, value in scores.items()}
    anomalous = {name: value[2:] for name, value in scores.items()}
    aurocs = image_aurocs(normal, anomalous)
    assert aurocs["local"] == pytest.approx(1.0)
    assert aurocs["global"] == pytest.approx(0.5)


def test_branch_metrics_report_each_branch_and_the_average() -> None:
    local = torch.zeros(4, 1, 16, 16)
    global_ = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(4, 16, 16)
    masks[2:, 4:8, 4:8] = 1
    local[2:, 0, 4:8, 4:8] = 2.0  # exactly on the defects
    metrics = BranchMetrics()
    metrics.update(local, global_, torch.tensor([0, 0, 1, 1]), masks)
    values = metrics.compute()
    assert set(values) == {f"{name}_{level}_{metric}" for name in ("local", "global", "paper")
                           for level, metric in (("image", "AUROC"), ("pixel", "AUROC"), ("pixel", "AUPRO"))}
    assert values["local_image_AUROC"] == pytest.approx(1.0)
    assert values["local_pixel_AUROC"] == pytest.approx(1.0)
    assert values["global_pixel_AUROC"] < 0.8
    without_masks = BranchMetrics()
    without_masks.update(local, global_, torch.tensor([0, 0, 1, 1]), None)
    assert set(without_masks.compute()) == {"local_image_AUROC", "global_image_AUROC", "paper_image_AUROC"}


def test_branch_metrics_smooth_the_maps_but_score_the_unsmoothed_maxima() -> None:
    local = torch.zeros(4, 1, 32, 32)
    masks = torch.zeros(4, 32, 32)
    masks[2:, 8:24, 8:24] = 1
    local[2:, 0, 15:17, 15:17] = 2.0  # a small peak in the middle of a large box
    local[1, 0, 3, 3] = 1.0  # a normal image's single hot pixel: above the defects' smoothed peak, below their own
    labels = torch.tensor([0, 0, 1, 1])
    plain, smoothed = BranchMetrics(), BranchMetrics()
    plain.update(local, torch.zeros_like(local), labels, masks)
    smoothed.update(local, torch.zeros_like(local), labels, masks, smooth=AnomalyMapGenerator(smoothing_sigma=4).smooth)
    plain_values, smoothed_values = plain.compute(), smoothed.compute()
    assert smoothed_values["local_image_AUROC"] == plain_values["local_image_AUROC"] == pytest.approx(1.0)
    assert smoothed_values["local_pixel_AUPRO"] > plain_values["local_pixel_AUPRO"] + 0.1  # the box is covered


def test_branch_metrics_rank_scores_across_batches_on_one_scale() -> None:
    """torchmetrics squashes only the updates whose values leave [0, 1]; the metric must not depend on batching."""
    def image_auroc(batches: list[tuple[list[float], list[int]]]) -> float:
        metrics = BranchMetrics()
        for scores, labels in batches:
            local = torch.tensor(scores).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
            metrics.update(local, torch.zeros_like(local), torch.tensor(labels), None)
        return metrics.compute()["local_image_AUROC"]

    # normal {0.3, 0.9}, anomalous {0.5, 1.5}: three of the four pairs are ordered right
    assert image_auroc([([0.3, 0.9], [0, 0]), ([0.5, 1.5], [1, 1])]) == pytest.approx(0.75)
    assert image_auroc([([0.3, 0.5], [0, 1]), ([0.9, 1.5], [0, 1])]) == pytest.approx(0.75)
    assert image_auroc([([30.0, 90.0], [0, 0]), ([50.0, 150.0], [1, 1])]) == pytest.approx(0.75)  # no saturation
