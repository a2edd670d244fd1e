"""EfficientAdPlugin's Lightning wiring: arguments, schedule, and the checks that run before any training work."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.data import generate_mvtec_dataset
from efficientad_plugin.images import ImageReadError


def _datamodule(root: Path, **overrides: object) -> MVTecAD:
    arguments = {"root": root, "category": "synthetic", "train_batch_size": 1, "eval_batch_size": 4,
                 "num_workers": 0, "val_split_mode": "from_train", "val_split_ratio": 0.2, "seed": 0}
    return MVTecAD(**{**arguments, **overrides})


def _engine(tmp_path: Path) -> Engine:
    return Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"image_size": 224}, "256"), ({"image_size": (256, 255)}, "256"), ({"model_size": "large"}, "small"),
     ({"max_steps": 0}, "max_steps"), ({"teacher_cache_mib": -1}, "teacher_cache_mib"),
     ({"lr_schedule": "cosine"}, "lr_schedule"), ({"warmup_fraction": 0.0}, "warmup_fraction"),
     ({"branch_weights": "mean"}, "branch_weights"), ({"local_size": "full"}, "local_size"),
     ({"local_size": (640, 200)}, "at least image_size"), ({"max_image_megapixels": 0}, "max_image_megapixels"),
     ({"autoencoder_start": 1.0}, "autoencoder_start"), ({"autoencoder_start": -0.1}, "autoencoder_start"),
     ({"map_smoothing_sigma": -1.0}, "map_smoothing_sigma"),
     ({"map_smoothing_sigma": float("nan")}, "map_smoothing_sigma")],
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


def _scheduled_rates(model: EfficientAdPlugin) -> tuple[list[float], torch.optim.Optimizer]:
    """The learning rate of each of the model's ``max_steps`` steps, stepping its optimizer and scheduler."""
    configuration = model.configure_optimizers()
    assert configuration["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = configuration["optimizer"], configuration["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(model.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates, optimizer


def test_learning_rate_drops_tenfold_at_95_percent_of_steps_per_step() -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=20)
    learning_rates, optimizer = _scheduled_rates(model)
    assert learning_rates[:19] == [pytest.approx(1e-4)] * 19  # steps 0..18
    assert learning_rates[19] == pytest.approx(1e-5)  # step 19 = int(0.95 * 20)
    optimised = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert not optimised & {id(parameter) for parameter in model.model.teacher.parameters()}
    assert optimised == {id(p) for p in [*model.model.student.parameters(), *model.model.autoencoder.parameters()]}


def test_one_cycle_schedule_peaks_at_lr_after_the_warm_up_and_ends_near_zero() -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=100, lr=1e-3, lr_schedule="one_cycle",
                              warmup_fraction=0.1)
    rates, _ = _scheduled_rates(model)
    assert rates[0] == pytest.approx(1e-3 / 25) and rates[9] == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-3 / 2500, rel=1e-3)


def test_bf16_mixed_on_a_cpu_without_native_bf16_is_refused_before_training(
        synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("efficientad_plugin.lightning_model.cpu_has_native_bf16", lambda: False)  # an AVX2 CPU
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=1)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, precision="bf16-mixed")
    with pytest.raises(ValueError, match="--trainer.precision 32"):
        engine.fit(model, _datamodule(synthetic_root))
    assert model.global_step == 0


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


def test_corrupt_test_image_fails_before_training_naming_the_file(synthetic_root: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_root, tmp_path / "data")
    corrupt = next((tmp_path / "data" / "synthetic" / "test" / "defect").glob("*.png"))
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=1)
    with pytest.raises(ImageReadError, match=corrupt.name):
        _engine(tmp_path).fit(model, _datamodule(tmp_path / "data"))
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
    assert not model.model.measure_student_pass  # one step: the student's passes are not worth timing


def test_untrained_model_refuses_to_test(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="train it first"):
        _engine(tmp_path).test(EfficientAdPlugin(teacher_weights="untrained"), _datamodule(synthetic_root))


def test_model_pickles_without_data_iterators(penalty_folder: Path) -> None:
    from efficientad_plugin.penalty import PenaltyImages

    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=penalty_folder)
    model.penalty_images = PenaltyImages(penalty_folder, model.image_size)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(restored.penalty_images.sample(3, 0), model.penalty_images.sample(3, 0))


class LearningRateRecorder(Callback):
    """The learning rate each training step runs at."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_train_batch_start(self, trainer: Trainer, *args: object) -> None:
        self.rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_step_checkpoint_is_written_every_n_steps_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=6, checkpoint_every_n_steps=2,
                              evaluator=False, visualizer=False)
    engine = _engine(tmp_path / "first")
    engine.fit(model, _datamodule(synthetic_root))  # lr x0.1 from step 5 of 6
    last_step = next((tmp_path / "first").rglob("last_step.ckpt"))
    assert last_step.parent == next((tmp_path / "first").rglob("model.ckpt")).parent
    state = torch.load(last_step, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # written at steps 2 and 4; step 6 is the final model.ckpt
    assert torch.isfinite(state["state_dict"]["model.teacher_mean"]).all()
    # resumed with a larger budget, the run follows that budget's schedule: x0.1 at step 9 of 10, not at 5
    resumed = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=10,
                                checkpoint_every_n_steps=2, evaluator=False, visualizer=False)
    recorder = LearningRateRecorder()
    engine = Engine(default_root_dir=tmp_path / "second", logger=False, accelerator="cpu", devices=1,
                    callbacks=[recorder])
    engine.fit(resumed, _datamodule(synthetic_root), ckpt_path=str(last_step))
    assert engine.trainer.global_step == 10
    assert resumed.model.anomaly_map_generator.is_fitted
    assert recorder.rates == {**dict.fromkeys(range(4, 9), pytest.approx(1e-4)), 9: pytest.approx(1e-5)}


def test_checkpoint_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        EfficientAdPlugin(teacher_weights="untrained", checkpoint_every_n_steps=0)


class StepRecorder(Callback):
    """Per training step: the logged losses, the image, and how often the teacher ran."""

    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []
        self.loss_dtypes: list[torch.dtype] = []
        self.images: list[str] = []
        self.teacher_calls: list[int] = []
        self.in_step = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer
        pl_module.model.teacher.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        if self.in_step:  # not the statistics pass, not validation
            self.teacher_calls[-1] += 1

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: ImageBatch, *_) -> None:
        del trainer, pl_module
        self.images.append(Path(batch.image_path[0]).name)
        self.teacher_calls.append(0)
        self.in_step = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: dict, *_) -> None:
        del pl_module
        self.in_step = False
        self.loss_dtypes.append(outputs["loss"].dtype)
        self.losses.append({name: float(value) for name, value in trainer.callback_metrics.items()
                            if name.startswith("train_")})


def test_teacher_cache_reuses_outputs_from_the_second_epoch_with_unchanged_losses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_mvtec_dataset(tmp_path / "data", num_train=3, num_test_good=1, num_test_defect=1, seed=0)
    runs = {}
    for budget in (1024, 0):
        seed_everything(0)
        recorder = StepRecorder()
        model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=3,
                                  teacher_cache_mib=budget, evaluator=False, visualizer=False)
        engine = Engine(default_root_dir=tmp_path / str(budget), logger=False, accelerator="cpu", devices=1,
                        callbacks=[recorder])
        with caplog.at_level(logging.INFO, logger="efficientad_plugin"), pytest.warns(UserWarning):
            engine.fit(model, _datamodule(tmp_path / "data", val_split_ratio=0.34))  # 2 train, 1 val image
        assert model.teacher_cache is None  # freed when training ends
        runs[budget] = recorder
    cached, uncached = runs[1024], runs[0]
    assert cached.images == uncached.images and cached.images[2] in cached.images[:2]
    assert cached.teacher_calls == [2, 2, 1]  # step 3 sees an image of epoch 1: only the augmented pass is left
    assert uncached.teacher_calls == [2, 2, 2]
    assert len(cached.losses) == 3 and set(cached.losses[0]) >= {"train_loss", "train_loss_hard", "train_loss_ae"}
    assert cached.losses == uncached.losses  # exactly
    messages = [record.message for record in caplog.records if record.message.startswith("Teacher cache")]
    assert messages[0].startswith("Teacher cache on: up to 1024 MiB")
    assert messages[1] == ("Teacher cache off: teacher_cache_mib is 0; the teacher runs on every training image at "
                           "every step.")


def test_autoencoder_start_skips_the_global_branch_in_early_steps(tmp_path: Path) -> None:
    generate_mvtec_dataset(tmp_path / "data", num_train=3, num_test_good=1, num_test_defect=1, seed=0)
    recorder = StepRecorder()
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=4, autoencoder_start=0.5,
                              teacher_cache_mib=0, evaluator=False, visualizer=False)
    autoencoder_before = [parameter.detach().clone() for parameter in model.model.autoencoder.parameters()]
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, callbacks=[recorder])
    with pytest.warns(UserWarning):
        engine.fit(model, _datamodule(tmp_path / "data", val_split_ratio=0.34))
    assert recorder.teacher_calls == [1, 1, 2, 2]  # the augmented image's teacher pass from step 2 (4 x 0.5) on
    assert ["train_loss_ae" in losses for losses in recorder.losses] == [False, False, True, True]
    assert not any(torch.equal(before, after)
                   for before, after in zip(autoencoder_before, model.model.autoencoder.parameters(), strict=True))


def test_evaluation_stays_fp32_under_mixed_precision() -> None:
    model = EfficientAdPlugin(teacher_weights="untrained")
    model.model.teacher_mean.zero_()
    model.model.teacher_std.fill_(1.0)
    model.model.anomaly_map_generator.st_quantiles.copy_(torch.tensor([0.0, 0.5]))
    model.model.anomaly_map_generator.ae_quantiles.copy_(torch.tensor([0.0, 0.2]))
    model.eval()
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.validation_step(ImageBatch(image=image.clone()), 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what --trainer.precision bf16-mixed wraps steps in
            predicted = model.predict_step(ImageBatch(image=image.clone()), 0)
    assert predicted.anomaly_map.dtype == predicted.pred_score.dtype == torch.float32
    assert torch.equal(predicted.anomaly_map, expected.anomaly_map)
    assert torch.equal(predicted.pred_score, expected.pred_score)


def _native_bf16() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()  # AVX-512-BF16 or AMX; otherwise bf16 is emulated


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 here: one emulated bf16 training step takes ~10 min")
def test_bf16_mixed_fit_keeps_losses_statistics_and_quantiles_fp32(tmp_path: Path) -> None:
    generate_mvtec_dataset(tmp_path / "data", num_train=3, num_test_good=1, num_test_defect=1, seed=0)
    recorder = StepRecorder()
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=1, evaluator=False,
                              visualizer=False)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator=accelerator, devices=1,
                    precision="bf16-mixed", callbacks=[recorder])
    with pytest.warns(UserWarning):
        engine.fit(model, _datamodule(tmp_path / "data", val_split_ratio=0.34))
    assert engine.trainer.global_step == 1
    assert recorder.loss_dtypes == [torch.float32]
    assert all(torch.isfinite(torch.tensor(list(recorder.losses[0].values()))))
    generator = model.model.anomaly_map_generator
    for buffer in (model.model.teacher_mean, model.model.teacher_std, generator.st_quantiles, generator.ae_quantiles):
        assert buffer.dtype == torch.float32 and torch.isfinite(buffer).all()


class _StopAfterFirstStep(Callback):
    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        trainer.should_stop = True


def test_runs_of_500_steps_or_more_time_the_student_passes_on_cpu(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped after one step; a shorter run (max_steps=1 in the test above) measures nothing."""
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=500, image_size=(256, 264),
                              evaluator=False, visualizer=False)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1,
                    callbacks=[_StopAfterFirstStep()])
    with caplog.at_level(logging.INFO, logger="efficientad_plugin"), pytest.warns(UserWarning):
        engine.fit(model, _datamodule(synthetic_root))
    assert model.model.measure_student_pass
    assert any(record.message.startswith("Student pass on this CPU") for record in caplog.records)


def test_auto_branch_weights_are_chosen_logged_saved_and_tested_per_branch(
        synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=1, branch_weights="auto",
                              visualizer=False)
    engine = _engine(tmp_path)
    with caplog.at_level(logging.INFO, logger="efficientad_plugin"):
        engine.fit(model, _datamodule(synthetic_root))
    choice = model.branch_choice
    assert choice is not None and choice.rule == "auto"
    assert set(choice.synthetic_auroc) == {"local", "global", "paper"}
    student, autoencoder = choice.explained_variance
    assert autoencoder < 0.5  # one step: the autoencoder has not learnt...
    assert choice.weights == (0.5, 0.5) and "only 2 normal validation images" in choice.reason  # ...but 2 are too few
    assert tuple(model.model.anomaly_map_generator.branch_weights.tolist()) == choice.weights
    assert "Branch weights (local, global)" in caplog.text and "Explained variance" in caplog.text
    saved = torch.load(next(tmp_path.rglob("model.ckpt")), map_location="cpu", weights_only=True)
    assert saved["branch_choice"] == choice.to_dict()
    assert tuple(saved["state_dict"]["model.anomaly_map_generator.branch_weights"].tolist()) == choice.weights
    metrics = engine.test(model, _datamodule(synthetic_root))[0]
    for branch in ("local", "global", "paper"):
        assert 0.0 <= metrics[f"{branch}_image_AUROC"] <= 1.0
        assert 0.0 <= metrics[f"{branch}_pixel_AUPRO"] <= 1.0


def test_checkpoint_from_before_branch_weights_loads_with_the_paper_average(
        trained_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    category, checkpoint = trained_checkpoint
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["state_dict"]["model.anomaly_map_generator.branch_weights"]
    state.pop("branch_choice", None)
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    restored = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, evaluator=False, visualizer=False)
    restored.model.anomaly_map_generator.set_branch_weights(1.0, 0.0)  # must be overwritten by the load
    restored.branch_choice = "stale"  # a reused model object: the old checkpoint has no choice
    datamodule = MVTecAD(root=category.parent, category=category.name, train_batch_size=1, eval_batch_size=4,
                         num_workers=0, val_split_mode="from_train", val_split_ratio=0.2, seed=0)
    _engine(tmp_path).test(restored, datamodule, ckpt_path=old)
    assert restored.model.anomaly_map_generator.branch_weights.tolist() == [0.5, 0.5]
    assert restored.branch_choice is None


def test_native_checkpoint_without_global_view_statistics_loads_with_the_full_size_ones(
        trained_checkpoint: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    category, checkpoint = trained_checkpoint  # a state dict as native mode saved it before the global statistics
    native = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, local_size="native", evaluator=False,
                               visualizer=False)
    datamodule = MVTecAD(root=category.parent, category=category.name, train_batch_size=1, eval_batch_size=1,
                         num_workers=0, val_split_mode="from_train", val_split_ratio=0.2, seed=0)
    with caplog.at_level(logging.WARNING, logger="efficientad_plugin"):
        _engine(tmp_path).test(native, datamodule, ckpt_path=checkpoint)
    assert torch.equal(native.model.global_teacher_mean, native.model.teacher_mean)
    assert torch.equal(native.model.global_teacher_std, native.model.teacher_std)
    assert not torch.isnan(native.model.teacher_mean).any()
    assert any("no teacher statistics of the global branch's view" in record.message for record in caplog.records)


def test_native_mode_pre_processor_and_model() -> None:
    native = EfficientAdPlugin(teacher_weights="untrained", local_size="native")
    assert native.pre_processor.transform is None and native.model.native  # each image at its own size
    sized = EfficientAdPlugin(teacher_weights="untrained", local_size=640)
    assert sized.local_size == (640, 640) and sized.pre_processor.transform(torch.rand(1, 3, 512, 700)).shape == (
        1, 3, 640, 640)
    default = EfficientAdPlugin(teacher_weights="untrained")
    assert default.local_size is None and not default.model.native and not default.model.anomaly_map_generator.native


def test_native_mode_refuses_an_image_smaller_than_the_crop_naming_it(tmp_path: Path) -> None:
    from efficientad_plugin.data import generate_mvtec_dataset

    root = generate_mvtec_dataset(tmp_path / "data", image_size=(256, 240), num_train=4, num_test_good=1,
                                  num_test_defect=1).parent
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=1, local_size="native", penalty_dir=None)
    with pytest.raises(ValueError, match=r"train/good/\S+ is 256x240 px at the local branch, smaller than image_size"):
        _engine(tmp_path).fit(model, _datamodule(root, val_split_ratio=0.5))
