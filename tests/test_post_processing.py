"""False-alarm-rate thresholds from normal validation images: known scores give the expected quantiles."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch

from efficientad_plugin.post_processing import (
    FalseAlarmRatePostProcessor,
    false_alarm_interval,
    images_needed,
)


class _Batch:
    """What the post-processor reads from a validation batch."""

    def __init__(self, scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.pred_score, self.anomaly_map, self.gt_label = scores, maps, labels
        self.gt_mask = None if labels is None else (maps > 1e9)


def _validate(post_processor: FalseAlarmRatePostProcessor, batches: list[_Batch]) -> None:
    post_processor.on_validation_epoch_start(None, None)
    for batch in batches:
        post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)


def _normal_batches(count: int = 200) -> tuple[list[_Batch], torch.Tensor]:
    scores = torch.arange(1, count + 1, dtype=torch.float32)[torch.randperm(count, generator=torch.Generator()
                                                                               .manual_seed(0))]
    maps = scores.view(-1, 1, 1).expand(-1, 4, 4) / 1000  # every pixel of image i holds score_i / 1000
    return [_Batch(scores[i : i + 8], maps[i : i + 8]) for i in range(0, count, 8)], scores


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_thresholds_are_the_normal_quantiles_and_the_score_keeps_its_meaning(rate: float) -> None:
    batches, scores = _normal_batches()
    post_processor = FalseAlarmRatePostProcessor(false_alarm_rate=rate)
    _validate(post_processor, batches)
    expected = 200 * (1 - rate)  # scores are 1..200: the r-th smallest is r
    assert float(post_processor.image_threshold) == pytest.approx(expected)
    assert float(post_processor.pixel_threshold) == pytest.approx(expected / 1000)
    labels = post_processor(InferenceBatch(pred_score=scores, anomaly_map=scores.view(-1, 1, 1).expand(-1, 4, 4)
                                           / 1000)).pred_label
    assert int(labels.sum()) == round(200 * rate)  # that share of the normal images is flagged
    report = post_processor.threshold_report
    assert report["mode"] == "false_alarm_rate" and report["normal_images"] == 200
    low, high = report["false_alarm_interval"]
    assert low < rate < high
    # the normalised image score is 0.5 at the threshold
    at_threshold = post_processor(InferenceBatch(pred_score=torch.tensor([expected]))).pred_score
    assert float(at_threshold) == pytest.approx(0.5)
    # the numbers travel in the state dict (checkpoint)
    restored = FalseAlarmRatePostProcessor(false_alarm_rate=rate)
    restored.load_state_dict(post_processor.state_dict())
    assert restored.threshold_report == report


def test_a_too_small_validation_set_warns_with_the_number_needed() -> None:
    batches, _ = _normal_batches(20)
    post_processor = FalseAlarmRatePostProcessor(false_alarm_rate=0.001)
    with pytest.warns(UserWarning, match=f"needs at least {images_needed(0.001)} normal validation images"):
        _validate(post_processor, batches)
    assert images_needed(0.001) == 3000
    big, _ = _normal_batches(400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough images: no warning
        _validate(FalseAlarmRatePostProcessor(false_alarm_rate=0.01), big)


def test_with_defective_validation_images_auto_keeps_anomalibs_f1_threshold() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 11.0])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    batch = _Batch(scores, scores.view(-1, 1, 1).expand(-1, 4, 4).clone(), labels)
    post_processor = FalseAlarmRatePostProcessor(false_alarm_rate=0.01)
    _validate(post_processor, [batch])
    assert post_processor.threshold_report["mode"] == "f1_adaptive"
    assert 4.0 <= float(post_processor.image_threshold) <= 10.0  # separates the two groups
    forced = FalseAlarmRatePostProcessor(false_alarm_rate=0.25, threshold="false_alarm_rate")
    _validate(forced, [batch])
    assert float(forced.image_threshold) == pytest.approx(3.0)  # from the four normal scores only


def test_the_interval_narrows_with_more_images_and_bad_arguments_are_refused() -> None:
    small, large = false_alarm_interval(100, 0.05), false_alarm_interval(10_000, 0.05)
    assert large[1] - large[0] < small[1] - small[0]
    assert large[0] < 0.05 < large[1]
    with pytest.raises(ValueError, match="false_alarm_rate must be in"):
        FalseAlarmRatePostProcessor(false_alarm_rate=5)
    with pytest.raises(ValueError, match="threshold must be one of"):
        FalseAlarmRatePostProcessor(threshold="youden")


def test_the_rate_is_set_through_anomalibs_cli_as_the_readme_shows(tmp_path: Path) -> None:
    from anomalib.cli import AnomalibCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: EfficientAdPlugin\n  init_args:\n    teacher_weights: untrained\n"
        "    post_processor:\n      class_path: efficientad_plugin.FalseAlarmRatePostProcessor\n"
        "      init_args: {false_alarm_rate: 0.05}\n"
        "data:\n  class_path: MVTecAD\n  init_args: {root: ./datasets/deeppcb_mini, category: pcb, "
        "val_split_mode: from_train, train_batch_size: 1}\n")
    post_processor = AnomalibCLI(["fit", "--config", str(config)], run=False).model.post_processor
    assert isinstance(post_processor, FalseAlarmRatePostProcessor) and post_processor.false_alarm_rate == 0.05
    from efficientad_plugin import EfficientAdPlugin

    default = EfficientAdPlugin(teacher_weights="untrained").post_processor
    assert isinstance(default, FalseAlarmRatePostProcessor) and default.false_alarm_rate == 0.01


def test_keep_order_keeps_the_order_beyond_the_range_and_changes_nothing_between_the_knees() -> None:
    from anomalib.post_processing import PostProcessor

    from efficientad_plugin.post_processing import KNEE

    batches, _ = _normal_batches()
    kept, clamped = FalseAlarmRatePostProcessor(), FalseAlarmRatePostProcessor(keep_order=False)
    _validate(kept, batches)
    _validate(clamped, batches)
    # normal range 1..200, threshold 198: anomalib's linear score is (x - 198) / 199 + 0.5
    scores = torch.tensor([-5000.0, -300.0, 0.0, 50.0, 120.0, 180.0, 198.0, 250.0, 300.0, 600.0, 1000.0, 5000.0])
    ordered = kept(InferenceBatch(pred_score=scores)).pred_score
    anomalib = clamped(InferenceBatch(pred_score=scores)).pred_score
    assert torch.equal(anomalib, PostProcessor._normalize(scores, clamped.image_min, clamped.image_max,
                                                          clamped.image_threshold))  # keep_order=False: anomalib's
    assert torch.equal(anomalib[-4:], torch.ones(4)) and torch.equal(anomalib[:4], torch.zeros(4))  # ties
    assert bool((ordered[1:] > ordered[:-1]).all()) and 0 < float(ordered.min()) and float(ordered.max()) < 1
    between = (anomalib >= 1 - KNEE) & (anomalib <= KNEE)
    assert int(between.sum()) == 2 and torch.equal(ordered[between], anomalib[between])
    assert torch.equal(kept(InferenceBatch(pred_score=scores)).pred_label,
                       clamped(InferenceBatch(pred_score=scores)).pred_label)
    # the maps too: pixels far outside the normal pixels keep their order
    maps = torch.tensor([-1.0, 0.3, 0.5, 0.9]).view(-1, 1, 1).expand(-1, 2, 2)
    pixels = kept(InferenceBatch(pred_score=scores[:4], anomaly_map=maps)).anomaly_map[:, 0, 0]
    assert bool((pixels[1:] > pixels[:-1]).all()) and 0 < float(pixels.min()) and float(pixels.max()) < 1


def test_keep_order_travels_in_the_checkpoint_and_an_older_checkpoint_takes_the_argument() -> None:
    saved = FalseAlarmRatePostProcessor(keep_order=False).checkpoint_config()
    restored = FalseAlarmRatePostProcessor()
    restored.load_checkpoint_config(saved)
    assert restored.keep_order is False
    older = {key: value for key, value in saved.items() if key != "keep_order"}
    for keep_order in (True, False):
        restored = FalseAlarmRatePostProcessor(keep_order=keep_order)
        restored.load_checkpoint_config(older)
        assert restored.keep_order is keep_order
