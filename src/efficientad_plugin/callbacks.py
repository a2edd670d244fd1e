"""Lightning callbacks of EfficientAdPlugin: long runs that lose little work and resume exactly."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torchdata.stateful_dataloader import StatefulDataLoader

logger = logging.getLogger(__name__)

STEP_CHECKPOINT = "last_step.ckpt"
NONFINITE_CHECKPOINT = "before_nonfinite_loss.ckpt"


def checkpoint_folder(trainer: Trainer) -> Path:
    """The folder of the trainer's ModelCheckpoint (where anomalib writes model.ckpt), else its root folder."""
    return Path(getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir)


def save_atomically(trainer: Trainer, path: Path) -> None:
    """Save a resumable checkpoint to ``path`` through a temporary file: a run killed while saving keeps the old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    trainer.save_checkpoint(partial)
    partial.replace(path)


class StepCheckpoint(Callback):
    """Save a resumable checkpoint every ``every_n_steps`` training steps, so a long run loses at most that many.

    The file, ``last_step.ckpt``, sits beside anomalib's ``model.ckpt`` and is replaced atomically.
    Resume with ``--ckpt_path`` on it. Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` writes in place (a
    run killed while saving leaves a truncated file and nothing to resume from) and shares its ``dirpath`` and
    ``last.ckpt`` with the checkpoint anomalib's Engine configures; this callback writes its own file atomically.
    """

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            msg = f"checkpoint_every_n_steps must be a positive number of steps, got {every_n_steps}."
            raise ValueError(msg)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        """Checkpoint after every ``every_n_steps``-th optimizer step (the last step is anomalib's model.ckpt)."""
        del pl_module, args
        step = trainer.global_step
        if step % self.every_n_steps or step >= (trainer.max_steps if trainer.max_steps > 0 else float("inf")):
            return
        save_atomically(trainer, checkpoint_folder(trainer) / STEP_CHECKPOINT)


class NonFiniteLossGuard(Callback):
    """Stop at the first NaN or Inf loss, before it reaches the weights, after saving the model as it still is."""

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        """Check the loss of this step; on NaN/Inf save ``before_nonfinite_loss.ckpt`` and raise."""
        del pl_module
        if bool(torch.isfinite(loss).all()):
            return
        path = checkpoint_folder(trainer) / NONFINITE_CHECKPOINT
        save_atomically(trainer, path)
        msg = (f"The training loss is {loss.item()} at step {trainer.global_step}; training stopped before this "
               f"step changed the weights. The model as it was is saved in {path}. Usual causes: a learning rate "
               f"that is too high (resume from that file with --ckpt_path and a lower --model.lr) or an input "
               f"image with NaN/Inf values (check the images of this step).")
        raise FloatingPointError(msg)


def resumable_loader(loader: DataLoader) -> DataLoader:
    """The same loader as a ``StatefulDataLoader``, whose position in its shuffled order Lightning checkpoints."""
    if isinstance(loader, StatefulDataLoader):
        return loader
    if loader.batch_size is None or not isinstance(loader.sampler, RandomSampler | SequentialSampler):
        logger.warning("The training DataLoader has a custom sampler: a resumed run restarts its epoch order.")
        return loader
    return StatefulDataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )


class ResumableDataOrder(Callback):
    """Make the training order part of the checkpoint, so a resumed run sees the images an uninterrupted one sees.

    anomalib's datamodules return a plain DataLoader, which starts a new shuffled order when a run resumes; the
    datamodule's ``train_dataloader`` is wrapped to return a ``StatefulDataLoader`` with the same settings.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Wrap the datamodule's ``train_dataloader`` when fitting."""
        del pl_module
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or getattr(datamodule.train_dataloader, "resumable", False):
            return
        make_loader = datamodule.train_dataloader

        def train_dataloader() -> DataLoader:
            return resumable_loader(make_loader())

        train_dataloader.resumable = True
        datamodule.train_dataloader = train_dataloader


def newest_step_checkpoint(folder: str | Path) -> Path | None:
    """The ``last_step.ckpt`` under ``folder`` (any of anomalib's ``v<n>`` fit folders) trained furthest, or ``None``.

    Ordered by the ``global_step`` stored in each file, ties by the version number read as a number (``v10`` after
    ``v2``, which a sort of the paths gets wrong). The step is what resuming keeps, and it travels with the file,
    whereas a copy between machines (cp, rsync without -t) resets modification times. A run that always resumes the
    newest (the convergence tool, the scale-out jobs) has steps that grow with versions, so both orders agree.
    Reading the step is cheap: the tensors are memory-mapped, not read; only the pickled metadata is. The files are
    this package's own checkpoints (``StepCheckpoint``).
    """

    def order(path: Path) -> tuple[int, int]:
        step = int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
        versions = [int(part[1:]) for part in path.parts if re.fullmatch(r"v\d+", part)]
        return step, versions[-1] if versions else -1

    # resolved: a path through anomalib's ``latest`` link (which some Pythons' rglob follow) counts once, under its
    # version folder's name
    found = {path.resolve() for path in Path(folder).rglob(STEP_CHECKPOINT)}
    return max(found, key=order, default=None)
