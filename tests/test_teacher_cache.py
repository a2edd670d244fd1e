"""Tests for efficientad_plugin.teacher_cache: reuse by image key, the memory budget, and when caching is unsafe."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import MVTecAD
from torch.utils.data import Subset
from torchvision.transforms import v2

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.teacher_cache import MIB, TeacherCache, uncacheable_reason


class Teacher:
    """A stand-in for the teacher pass: a new output per call, and a count of calls."""

    def __init__(self, shape: tuple[int, ...] = (1, 4, 8, 8)) -> None:
        self.shape = shape
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.full(self.shape, float(self.calls))


# --- the cache ------------------------------------------------------------------------------------------------


def test_second_lookup_of_an_image_reuses_its_output_without_a_copy() -> None:
    cache, teacher = TeacherCache(budget_mib=1), Teacher()
    first = cache.lookup(["a.png"], teacher)
    again = cache.lookup(["a.png"], teacher)
    assert teacher.calls == 1
    assert torch.equal(again, first) and again.shape == (1, 4, 8, 8)
    assert again.data_ptr() == first.data_ptr()  # the stored tensor itself, not a copy
    other = cache.lookup(["b.png"], teacher)
    assert teacher.calls == 2 and float(other[0, 0, 0, 0]) == 2.0
    assert len(cache) == 2 and cache.nbytes == 2 * 4 * 8 * 8 * 4


def test_past_the_budget_nothing_more_is_stored_and_the_rest_is_recomputed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    one_output = 4 * 8 * 8 * 4  # bytes of a [1, 4, 8, 8] float32 output
    cache, teacher = TeacherCache(budget_mib=2.5 * one_output / MIB), Teacher()
    with caplog.at_level(logging.INFO, logger="efficientad_plugin.teacher_cache"):
        for _ in range(3):
            for key in ("a", "b", "c", "d"):
                cache.lookup([key], teacher)
    assert len(cache) == 2 and cache.nbytes == 2 * one_output <= cache.budget_bytes
    assert cache.full
    assert teacher.calls == 4 + 2 + 2  # "c" and "d" at every epoch
    assert [record.message.startswith("Teacher cache full at 2 images") for record in caplog.records] == [True]


def test_batches_are_stored_whole_and_partial_hits_recompute() -> None:
    cache, teacher = TeacherCache(budget_mib=1), Teacher((2, 4, 8, 8))
    first = cache.lookup(["a", "b"], teacher)
    swapped = cache.lookup(["b", "a"], teacher)
    assert teacher.calls == 1
    assert torch.equal(swapped, first.flip(0))
    cache.lookup(["a", "c"], teacher)  # "a" is stored already: computed, not stored again
    assert teacher.calls == 2 and len(cache) == 2 and cache.nbytes == 2 * 4 * 8 * 8 * 4


def test_batches_without_keys_are_always_computed() -> None:
    cache, teacher = TeacherCache(budget_mib=1), Teacher()
    cache.lookup(None, teacher)
    cache.lookup([], teacher)
    assert teacher.calls == 2 and len(cache) == 0


# --- when the cache is safe -----------------------------------------------------------------------------------


class Unknown(v2.Transform):
    """An identity transform the cache cannot know to be deterministic."""

    def transform(self, inpt: object, params: dict) -> object:
        return inpt


class JitteredResize(v2.Resize):
    """A subclass of a deterministic transform, which could add randomness."""


RESIZE = v2.Resize((256, 256), antialias=True)


@pytest.mark.parametrize(
    "augmentations",
    [None, RESIZE, v2.Compose([v2.ToDtype(torch.float32), v2.CenterCrop(240), RESIZE]),
     v2.Compose([v2.Compose([v2.Grayscale(3)]), v2.Normalize([0.5] * 3, [0.2] * 3)])],
)
def test_deterministic_augmentations_allow_the_cache(augmentations: v2.Transform | None) -> None:
    assert uncacheable_reason(SimpleNamespace(augmentations=augmentations), None) is None


@pytest.mark.parametrize(
    ("augmentations", "name"),
    [(v2.RandomHorizontalFlip(), "RandomHorizontalFlip"), (v2.ColorJitter(0.1), "ColorJitter"),
     (v2.Compose([RESIZE, v2.Compose([v2.RandomApply([v2.GaussianBlur(3)], p=0.0)])]), "RandomApply"),
     (v2.Compose([RESIZE, Unknown()]), "Unknown"), (v2.Lambda(lambda image: image), "Lambda"),
     (JitteredResize(256), "JitteredResize"), (v2.RandomOrder([RESIZE]), "RandomOrder")],
)
def test_random_or_unknown_augmentations_turn_the_cache_off(augmentations: v2.Transform, name: str) -> None:
    reason = uncacheable_reason(SimpleNamespace(augmentations=augmentations), None)
    assert reason == f"the train augmentation {name} is random or not known to be deterministic"


def test_a_random_pre_processor_transform_turns_the_cache_off() -> None:
    pre_processor = SimpleNamespace(transform=v2.Compose([v2.RandomResizedCrop(256)]))
    reason = uncacheable_reason(SimpleNamespace(augmentations=RESIZE), pre_processor)
    assert "pre-processor transform RandomResizedCrop" in reason


def test_datasets_are_unwrapped_and_unknown_datasets_turn_the_cache_off() -> None:
    flipped = SimpleNamespace(augmentations=v2.RandomVerticalFlip())
    assert "RandomVerticalFlip" in uncacheable_reason(Subset(flipped, []), None)
    assert "TensorDataset" in uncacheable_reason(torch.utils.data.TensorDataset(torch.zeros(1)), None)


@pytest.mark.parametrize(("train_augmentations", "cacheable"), [(None, True), (v2.RandomHorizontalFlip(), False)])
def test_anomalib_datamodule_augmentations_are_read(synthetic_root: Path, train_augmentations: v2.Transform | None,
                                                    cacheable: bool) -> None:
    datamodule = MVTecAD(root=synthetic_root, category="synthetic", num_workers=0, val_split_mode="from_train",
                         val_split_ratio=0.2, seed=0, train_augmentations=train_augmentations)
    datamodule.setup()
    pre_processor = EfficientAdPlugin(teacher_weights="untrained").pre_processor
    assert (uncacheable_reason(datamodule.train_data, pre_processor) is None) is cacheable
