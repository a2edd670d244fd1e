"""Run (or resume) a distillation with Lightning and write the teacher, its provenance and its loss curve."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from ..callbacks import STEP_CHECKPOINT, NonFiniteLossGuard, StepCheckpoint, save_atomically
from ..hardware import auto_bf16, cpu_description
from ..teacher_weights import sha256_of
from .config import RESUMABLE_CHANGES, DistillationConfig
from .lightning_module import TeacherDistillation

logger = logging.getLogger(__name__)


class _WallClock(Callback):
    """Training seconds summed over resumptions (for the throughput), and a stop after ``max_minutes`` of this call.

    Lightning's ``max_time`` counts the time of earlier legs too (its Timer is restored from the checkpoint), so a
    resumed run given another hour would stop at once.
    """

    def __init__(self, max_minutes: float | None) -> None:
        self.elapsed, self._began = 0.0, 0.0
        self._deadline = float("inf") if max_minutes is None else time.perf_counter() + 60 * max_minutes

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        now = time.perf_counter()
        self.elapsed, self._began = self.elapsed + now - self._began, now
        if now >= self._deadline:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict["elapsed"])


def checkpoint_path(output: str | Path) -> Path:
    """Where the resumable checkpoint of the run writing ``output`` lives: ``<output stem>_checkpoints/``."""
    output = Path(output)
    return output.parent / f"{output.stem}_checkpoints" / STEP_CHECKPOINT


def _check_resumable(path: Path, config: DistillationConfig) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    previous = state["hyper_parameters"]["distillation"]
    changed = {key: (previous.get(key), value) for key, value in config.to_dict().items()
               if key not in RESUMABLE_CHANGES and previous.get(key) != value}
    if changed:
        details = "; ".join(f"{key}: was {old!r}, now {new!r}" for key, (old, new) in changed.items())
        msg = f"{path} was written by a run with other settings ({details}); resume with the same ones."
        raise ValueError(msg)


def distill(config: DistillationConfig, output: str | Path, resume: bool = False, progress: bool = True,
            max_minutes: float | None = None, accelerator: str = "auto") -> Path:
    """Distil a teacher into ``output`` (PDN state dict), with ``<output>.json`` provenance and a loss curve.

    Training goes through Lightning: precision (``bf16-mixed`` where ``auto`` finds native bf16), a resumable
    checkpoint every ``checkpoint_every`` steps and at the end (``checkpoint_path(output)``), the NaN guard and
    the progress bar are the same as in model training. ``max_minutes`` stops the run (resumably) after that much
    wall time; ``resume`` continues from the checkpoint with the same data order.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(output)
    resume_from = checkpoint if resume and checkpoint.is_file() else None
    if resume_from is not None:
        _check_resumable(resume_from, config)
    torch.manual_seed(config.seed)
    module = TeacherDistillation(config)
    clock = _WallClock(max_minutes)
    trainer = Trainer(accelerator=accelerator, devices=1, max_steps=config.steps, max_epochs=-1,
                      precision=_precision(config, accelerator), logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0,
                      default_root_dir=checkpoint.parent,
                      callbacks=[StepCheckpoint(config.checkpoint_every), NonFiniteLossGuard(), clock])
    machine = torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else cpu_description()
    logger.info("Distilling in %s on %s", trainer.precision, machine)
    trainer.fit(module, ckpt_path=resume_from)
    save_atomically(trainer, checkpoint)
    if trainer.global_step < config.steps:
        logger.info("Stopped at step %d of %d; --resume continues", trainer.global_step, config.steps)
    torch.save({key: value.detach().cpu() for key, value in module.pdn.state_dict().items()}, output)
    leg = {"precision": "bf16" if "bf16" in str(trainer.precision) else "32", "machine": machine}
    write_provenance(config, output, module.history, clock.elapsed, len(module.dataset), leg)
    return output


def _precision(config: DistillationConfig, accelerator: str) -> str:
    if config.precision == "auto":
        device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
        return "bf16-mixed" if auto_bf16(device) else "32-true"
    return "bf16-mixed" if config.precision == "bf16" else "32-true"


def _previous_legs(init_weights: str | None) -> list[dict]:
    """The legs recorded in the sidecar of the weights this run started from (one leg for a flat sidecar)."""
    if init_weights is None:
        return []
    sidecar = Path(init_weights).with_suffix(".json")
    if not sidecar.is_file():
        return [{"file": Path(init_weights).name, "provenance": "none found"}]
    previous = json.loads(sidecar.read_text())
    return previous.get("legs") or [{key: value for key, value in previous.items() if key != "legs"}]


def write_provenance(config: DistillationConfig, output: Path, history: list[tuple[int, float]], elapsed: float,
                     num_images: int, leg: dict[str, str]) -> None:
    """``<output>.json`` (settings, this leg and the earlier ones, throughput, sha256) and ``<output>.loss.png``."""
    tail = [loss for _, loss in history[-50:]]
    summary = {"steps_done": history[-1][0] if history else 0,
               "final_loss": sum(tail) / len(tail) if tail else None, "wall_seconds": round(elapsed, 1),
               "image_steps_per_second": round(len(history) * config.batch_size / elapsed, 3) if elapsed else None}
    provenance = {**config.to_dict(), "num_images": num_images, **summary, **leg, "sha256": sha256_of(output),
                  "file": output.name, "legs": [*_previous_legs(config.init_weights), {**config.to_dict(), **leg,
                                                                                      **summary}]}
    output.with_suffix(".json").write_text(json.dumps(provenance, indent=2))
    plot_loss(history, output.with_suffix(".loss.png"))


def plot_loss(history: list[tuple[int, float]], path: Path) -> None:
    """The loss per step and its running mean, as a PNG."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history, strict=True)
        axis.plot(steps, losses, linewidth=0.6, alpha=0.4, label="step")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]
        axis.plot(steps, smooth, linewidth=1.5, label=f"mean of {window}")
    axis.set_xlabel("step")
    axis.set_ylabel("MSE to normalised backbone features")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
