"""Lightning callbacks of EfficientAdPlugin."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

STEP_CHECKPOINT = "last_step.ckpt"


class StepCheckpoint(Callback):
    """Save a resumable checkpoint every ``every_n_steps`` training steps, so a long run loses at most that many.

    The file, ``last_step.ckpt``, sits beside anomalib's ``model.ckpt`` (in the trainer's checkpoint folder) and is
    replaced atomically: a run killed while saving keeps the previous one. Resume with ``--ckpt_path`` on it.
    """

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            msg = f"checkpoint_every_n_steps must be a positive number of steps, got {every_n_steps}."
            raise ValueError(msg)
        self.every_n_steps = every_n_steps

    @staticmethod
    def path(trainer: Trainer) -> Path:
        """Where the checkpoint goes: the folder of the trainer's ModelCheckpoint, else its root folder."""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        return Path(folder) / STEP_CHECKPOINT

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        """Checkpoint after every ``every_n_steps``-th optimizer step (the last step is anomalib's model.ckpt)."""
        del pl_module, args
        step = trainer.global_step
        if step % self.every_n_steps or step >= (trainer.max_steps if trainer.max_steps > 0 else float("inf")):
            return
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        trainer.save_checkpoint(partial)
        partial.replace(path)
