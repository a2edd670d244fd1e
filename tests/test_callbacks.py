"""Tests for efficientad_plugin.callbacks: the NaN guard and the resumable training order."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.callbacks import NONFINITE_CHECKPOINT, resumable_loader


class StudentSnapshots(Callback):
    """The student's weights after each finished step."""

    def __init__(self) -> None:
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args: object) -> None:  # noqa: ANN001
        self.after_step[trainer.global_step] = {name: value.clone() for name, value in
                                                pl_module.model.student.state_dict().items()}


def test_nan_loss_stops_with_the_step_and_saves_the_model_before_it(synthetic_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, max_steps=5, evaluator=False,
                              visualizer=False)
    compute_losses = model.loss.forward
    calls = []

    def poisoned(features: object) -> dict[str, torch.Tensor]:
        losses = compute_losses(features)
        calls.append(None)
        if len(calls) == 2:  # the second step: global_step 1
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(model.loss, "forward", poisoned)
    snapshots = StudentSnapshots()
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, callbacks=[snapshots])
    datamodule = MVTecAD(root=synthetic_root, category="synthetic", train_batch_size=1, num_workers=0,
                         val_split_mode="from_train", val_split_ratio=0.2, seed=0)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1.*before_nonfinite_loss.ckpt"):
        engine.fit(model, datamodule=datamodule)
    assert list(snapshots.after_step) == [1]  # the poisoned step never finished
    saved = torch.load(next(tmp_path.rglob(NONFINITE_CHECKPOINT)), map_location="cpu", weights_only=False)
    assert saved["global_step"] == 1
    for name, value in snapshots.after_step[1].items():
        assert torch.equal(saved["state_dict"][f"model.student.{name}"], value), name
        assert torch.equal(model.model.student.state_dict()[name], value), name  # no NaN reached the weights


def test_resumable_loader_keeps_the_settings_and_restores_the_position() -> None:
    def collate(items: list[int]) -> list[int]:
        return items

    torch.manual_seed(0)
    loader = resumable_loader(DataLoader(list(range(10)), batch_size=2, shuffle=True, collate_fn=collate))
    assert isinstance(loader, StatefulDataLoader)
    assert loader.batch_size == 2 and loader.collate_fn is collate
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(2)]
    state = loader.state_dict()
    rest = list(iterator)
    torch.manual_seed(123)  # a resumed process: another global RNG state
    restored = resumable_loader(DataLoader(list(range(10)), batch_size=2, shuffle=True, collate_fn=collate))
    restored.load_state_dict(state)
    assert list(restored) == rest
    assert sorted(sum(seen + rest, [])) == list(range(10))


def test_resumable_loader_leaves_custom_samplers_alone(caplog: pytest.LogCaptureFixture) -> None:
    loader = DataLoader(list(range(4)), sampler=WeightedRandomSampler([1.0] * 4, 4))
    with caplog.at_level(logging.WARNING):
        assert resumable_loader(loader) is loader
    assert "custom sampler" in caplog.text
