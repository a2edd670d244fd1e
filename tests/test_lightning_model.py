"""EfficientAdPlugin's Lightning wiring: arguments, schedule, and the checks that run before any training work."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from efficientad_plugin import EfficientAdPlugin


def _datamodule(root: Path, **overrides: object) -> MVTecAD:
    arguments = {"root": root, "category": "synthetic", "train_batch_size": 1, "eval_batch_size": 4,
                 "num_workers": 0, "val_split_mode": "from_train", "val_split_ratio": 0.2, "seed": 0}
    return MVTecAD(**{**arguments, **overrides})


def _engine(tmp_path: Path) -> Engine:
    return Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"image_size": 224}, "256"), ({"image_size": (256, 255)}, "256"), ({"model_size": "large"}, "small"),
     ({"max_steps": 0}, "max_steps")],
)
def test_bad_arguments_fail_at_construction(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EfficientAdPlugin(teacher_weights="untrained", **arguments)


def test_trainer_arguments_carry_the_step_budget_and_one_final_validation() -> None:
    arguments = EfficientAdPlugin(teacher_weights="untrained", max_steps=123).trainer_arguments
    assert arguments["max_steps"] == 123
    assert arguments["val_check_interval"] == 123
    assert arguments["check_val_every_n_epoch"] is None
    assert arguments["max_epochs"] == -1


def test_learning_rate_drops_tenfold_at_95_percent_of_steps_per_step() -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=20)
    configuration = model.configure_optimizers()
    assert configuration["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = configuration["optimizer"], configuration["lr_scheduler"]["scheduler"]
    learning_rates = []
    for _ in range(20):
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert learning_rates[:19] == [pytest.approx(1e-4)] * 19  # steps 0..18
    assert learning_rates[19] == pytest.approx(1e-5)  # step 19 = int(0.95 * 20)
    optimised = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert not optimised & {id(parameter) for parameter in model.model.teacher.parameters()}
    assert optimised == {id(p) for p in [*model.model.student.parameters(), *model.model.autoencoder.parameters()]}


def test_pre_processor_resizes_to_image_size_without_normalising() -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", image_size=(256, 320))
    output = model.pre_processor.transform(torch.rand(1, 3, 300, 300))
    assert output.shape[-2:] == (256, 320)
    assert 0.0 <= float(output.min()) and float(output.max()) <= 1.0


def test_train_batch_size_other_than_one_fails_before_training(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=1)
    with pytest.raises(ValueError, match="train_batch_size 1"):
        _engine(tmp_path).fit(model, _datamodule(synthetic_root, train_batch_size=2))
    assert model.global_step == 0
    assert not model.model.has_teacher_statistics


def test_missing_validation_split_fails_before_training(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=1)
    with pytest.raises(ValueError, match="val_split_mode from_train"):
        _engine(tmp_path).fit(model, _datamodule(synthetic_root, val_split_mode="none"))
    assert model.global_step == 0


def test_missing_penalty_folder_fails_before_training(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=tmp_path / "absent", max_steps=1)
    with pytest.raises(FileNotFoundError, match="absent"):
        _engine(tmp_path).fit(model, _datamodule(synthetic_root))
    assert model.global_step == 0


def test_missing_teacher_file_fails_before_training(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights=str(tmp_path / "teacher_small.pth"), max_steps=1)
    with pytest.raises(FileNotFoundError, match="teacher_small.pth"):
        _engine(tmp_path).fit(model, _datamodule(synthetic_root))
    assert model.global_step == 0


def test_warns_about_test_leakage_untrained_teacher_and_no_penalty(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=1)
    with pytest.warns(UserWarning) as records:
        _engine(tmp_path).fit(model, _datamodule(synthetic_root, val_split_mode="same_as_test"))
    messages = " ".join(str(record.message) for record in records)
    assert "leaks test data" in messages
    assert "teacher is random" in messages
    assert "without the pretraining penalty" in messages
    assert model.model.anomaly_map_generator.is_fitted


def test_untrained_model_refuses_to_test(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="train it first"):
        _engine(tmp_path).test(EfficientAdPlugin(teacher_weights="untrained"), _datamodule(synthetic_root))


def test_model_pickles_without_data_iterators(penalty_folder: Path) -> None:
    from efficientad_plugin.penalty import PenaltyImages

    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=penalty_folder)
    model.penalty_images = PenaltyImages(penalty_folder, model.image_size)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(restored.penalty_images.sample(3, 0), model.penalty_images.sample(3, 0))


def test_step_checkpoint_is_written_every_n_steps_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=5, checkpoint_every_n_steps=2)
    engine = _engine(tmp_path / "first")
    engine.fit(model, _datamodule(synthetic_root))
    last_step = next((tmp_path / "first").rglob("last_step.ckpt"))
    assert last_step.parent == next((tmp_path / "first").rglob("model.ckpt")).parent
    state = torch.load(last_step, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # written at steps 2 and 4; step 5 is the final model.ckpt
    assert torch.isfinite(state["state_dict"]["model.teacher_mean"]).all()
    resumed = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=5,
                                checkpoint_every_n_steps=2)
    engine = _engine(tmp_path / "second")
    engine.fit(resumed, _datamodule(synthetic_root), ckpt_path=str(last_step))
    assert engine.trainer.global_step == 5
    assert resumed.model.anomaly_map_generator.is_fitted


def test_checkpoint_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        EfficientAdPlugin(teacher_weights="untrained", checkpoint_every_n_steps=0)
