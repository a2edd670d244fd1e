"""Teacher distillation: a tiny Lightning run on generated images gives a loadable teacher, and resume is exact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from efficientad_plugin.distillation import (
    DistillationConfig,
    FeatureTarget,
    StepBatchSampler,
    checkpoint_path,
    distill,
    learning_rate_schedule,
    load_backbone,
)
from efficientad_plugin.pdn import PatchDescriptionNetwork, load_pdn_state_dict
from efficientad_plugin.teacher_weights import load_teacher_state_dict


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (90 + 10 * index, 120, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def _config(images: Path, backbone: Path, **overrides: object) -> DistillationConfig:
    arguments = {"images": str(images), "backbone_weights": str(backbone), "image_size": 64, "steps": 4,
                 "batch_size": 2, "statistics_images": 4, "num_workers": 0, "checkpoint_every": 2, "precision": "32"}
    return DistillationConfig(**{**arguments, **overrides})


def test_backbone_weights_load_by_order_and_targets_align_with_padded_pdn(backbone_file: Path) -> None:
    extractor = load_backbone("tf_efficientnet_lite0", backbone_file, (2, 3))
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference.load_state_dict(dict(zip(reference.state_dict(), torch.load(backbone_file).values(), strict=True)))
    assert torch.equal(extractor.state_dict()["conv_stem.weight"], reference.state_dict()["conv_stem.weight"])
    targets = FeatureTarget(extractor)(torch.rand(1, 3, 128, 128))
    assert targets.shape == (1, 384, 16, 16)
    assert PatchDescriptionNetwork("small", padding=True)(torch.rand(1, 3, 64, 64)).shape[-2:] == targets.shape[-2:]


def test_batches_depend_only_on_seed_and_step() -> None:
    sampler = StepBatchSampler(num_images=5, batch_size=3, seed=1, start=0, stop=4)
    resumed = StepBatchSampler(num_images=5, batch_size=3, seed=1, start=lambda: 2, stop=4)
    assert list(sampler)[2:] == list(resumed)
    assert len(resumed) == 2
    indices = [index for batch in list(sampler)[:5] for index, _ in batch][:5]
    assert sorted(indices) == list(range(5))  # each epoch is a permutation


def test_one_cycle_warms_up_peaks_and_decays_while_constant_stays() -> None:
    config = DistillationConfig(images="", steps=100, lr=1e-3, schedule="one_cycle", warmup_fraction=0.1)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = learning_rate_schedule(optimizer, config)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-3 / 25)
    assert max(rates) == pytest.approx(1e-3) and int(np.argmax(rates)) in (9, 10)
    assert rates[-1] < 1e-5 and all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    constant = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedule = learning_rate_schedule(constant, DistillationConfig(images="", steps=100, lr=1e-4))
    for _ in range(50):
        constant.step()
        schedule.step()
    assert constant.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        DistillationConfig(images="", precision="fp8")
    with pytest.raises(ValueError, match="schedule must be one of"):
        DistillationConfig(images="", schedule="step")


def test_tiny_distillation_writes_a_loadable_teacher_with_provenance(image_folder: Path, backbone_file: Path,
                                                                      tmp_path: Path) -> None:
    output = distill(_config(image_folder, backbone_file), tmp_path / "teacher.pth", progress=False)
    state_dict, source = load_teacher_state_dict(output, "small")
    load_pdn_state_dict(PatchDescriptionNetwork("small"), state_dict, source)
    provenance = json.loads(output.with_suffix(".json").read_text())
    assert provenance["steps_done"] == 4
    assert provenance["backbone"] == "tf_efficientnet_lite0"
    assert provenance["num_images"] == 6
    assert provenance["precision"] == "32"
    assert np.isfinite(provenance["final_loss"])
    assert provenance["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert [leg["steps_done"] for leg in provenance["legs"]] == [4]
    assert output.with_suffix(".loss.png").stat().st_size > 0


def test_a_further_leg_starts_from_the_weights_and_records_both_legs(image_folder: Path, backbone_file: Path,
                                                                      tmp_path: Path) -> None:
    first = distill(_config(image_folder, backbone_file), tmp_path / "first.pth", progress=False)
    config = _config(image_folder, backbone_file, init_weights=str(first), steps=2, schedule="one_cycle", lr=1e-3)
    from efficientad_plugin.distillation import TeacherDistillation

    module = TeacherDistillation(config)
    for key, value in torch.load(first).items():
        assert torch.equal(module.pdn.state_dict()[key], value), key
    second = distill(config, tmp_path / "second.pth", progress=False)
    legs = json.loads(second.with_suffix(".json").read_text())["legs"]
    assert [(leg["steps_done"], leg["schedule"]) for leg in legs] == [(4, "constant"), (2, "one_cycle")]


def test_interrupted_distillation_resumes_at_its_step_with_the_same_result(image_folder: Path, backbone_file: Path,
                                                                           tmp_path: Path) -> None:
    config = _config(image_folder, backbone_file, schedule="one_cycle", lr=1e-3)
    uninterrupted = distill(config, tmp_path / "whole" / "teacher.pth", progress=False)
    interrupted = tmp_path / "parts" / "teacher.pth"
    distill(config, interrupted, progress=False, max_minutes=0)  # stops after its first step
    assert torch.load(checkpoint_path(interrupted), weights_only=True)["global_step"] == 1
    distill(config, interrupted, resume=True, progress=False)
    checkpoint = torch.load(checkpoint_path(interrupted), weights_only=True)
    assert [step for step, _ in checkpoint["history"]] == [1, 2, 3, 4]
    whole, parts = torch.load(uninterrupted), torch.load(interrupted)
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key])


def test_resume_with_other_settings_is_refused(image_folder: Path, backbone_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "teacher.pth"
    distill(_config(image_folder, backbone_file), output, progress=False, max_minutes=0)
    with pytest.raises(ValueError, match=r"other settings \(lr: was 0.0001, now 0.001\)"):
        distill(_config(image_folder, backbone_file, lr=1e-3), output, resume=True, progress=False)
