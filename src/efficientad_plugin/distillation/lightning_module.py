"""Teacher distillation as a LightningModule: the PDN regresses normalised backbone features (paper App. A)."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader

from ..images import list_images
from ..pdn import TEACHER_CHANNELS, PatchDescriptionNetwork, load_pdn_state_dict
from ..schedules import one_cycle
from ..statistics import channel_statistics
from ..teacher_weights import load_teacher_state_dict
from ..torch_model import IMAGENET_MEAN, IMAGENET_STD
from .config import DistillationConfig
from .data import DistillationImages, StepBatchSampler
from .targets import FeatureTarget, load_backbone

STATISTICS_SEED_OFFSET = 7919  # the statistics images are drawn apart from the training order


def learning_rate_schedule(optimizer: torch.optim.Optimizer,
                           config: DistillationConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's constant rate, or the one-cycle schedule (:func:`~efficientad_plugin.schedules.one_cycle`)."""
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return one_cycle(optimizer, config.lr, config.steps, config.warmup_fraction)


class TeacherDistillation(LightningModule):
    """A padded PDN learns the backbone's 384-channel features, normalised per channel, with an MSE loss.

    The target statistics are computed once when fitting starts (on ``statistics_images`` images, float64 sums)
    and stored as buffers, so a resumed run reuses them. ``history`` holds ``(step, loss)`` for the loss curve and
    travels in the checkpoint.
    """

    def __init__(self, config: DistillationConfig) -> None:
        super().__init__()
        self.config = config
        self.save_hyperparameters({"distillation": config.to_dict()})
        self.pdn = PatchDescriptionNetwork(config.model_size, TEACHER_CHANNELS, padding=True)
        if config.init_weights is not None:
            state_dict, source = load_teacher_state_dict(config.init_weights, config.model_size)
            load_pdn_state_dict(self.pdn, state_dict, source)
        self.target = FeatureTarget(load_backbone(config.backbone, config.backbone_weights, config.layers))
        self.register_buffer("target_mean", torch.zeros(1, TEACHER_CHANNELS, 1, 1))
        self.register_buffer("target_std", torch.zeros(1, TEACHER_CHANNELS, 1, 1))
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.dataset = DistillationImages(list_images(config.images), config.image_size, config.crop_size)
        self.history: list[tuple[int, float]] = []

    def _loader(self, sampler: StepBatchSampler, persistent: bool) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.config.num_workers,
                          persistent_workers=persistent and self.config.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Batches from the trainer's current step on: a resumed run draws what an uninterrupted one draws."""
        sampler = StepBatchSampler(len(self.dataset), self.config.batch_size, self.config.seed,
                                   lambda: self.trainer.global_step, self.config.steps)
        return self._loader(sampler, persistent=True)

    @torch.no_grad()
    def fit_target_statistics(self) -> None:
        """Per-channel mean and std of the targets over ``statistics_images`` images, in fp32."""
        config = self.config
        count = min(config.statistics_images, len(self.dataset))
        sampler = StepBatchSampler(len(self.dataset), config.batch_size, config.seed + STATISTICS_SEED_OFFSET, 0,
                                   math.ceil(count / config.batch_size))
        with torch.autocast(self.device.type, enabled=False):
            mean, std = channel_statistics(self.target(large.to(self.device))
                                           for large, _ in self._loader(sampler, persistent=False))
        self.target_mean.copy_(mean.view_as(self.target_mean))
        self.target_std.copy_(std.clamp_min(1e-6).view_as(self.target_std))

    def on_fit_start(self) -> None:
        """Compute the target statistics unless a resumed checkpoint brought them."""
        if not bool(self.target_std.any()):
            self.fit_target_statistics()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """MSE between the PDN's output on the small image and the normalised features of the large one."""
        large, small = batch
        with torch.autocast(self.device.type, enabled=False):
            targets = (self.target(large) - self.target_mean) / self.target_std
        outputs = self.pdn((small - self.imagenet_mean) / self.imagenet_std)
        loss = F.mse_loss(outputs.float(), targets)
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the step's loss for the curve and the provenance."""
        del batch, batch_idx
        self.history.append((self.trainer.global_step, float(outputs["loss"])))

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam (paper: lr 1e-4, weight decay 1e-5) with the configured schedule, stepped every step."""
        optimizer = torch.optim.Adam(self.pdn.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        scheduler = learning_rate_schedule(optimizer, self.config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The loss history travels with the weights; the frozen backbone does not (it is rebuilt from its file)."""
        checkpoint["history"] = [list(item) for item in self.history]
        checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items()
                                    if not key.startswith("target.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the loss history and put the backbone's weights back for a strict load."""
        self.history = [(int(step), float(loss)) for step, loss in checkpoint.get("history", [])]
        checkpoint["state_dict"].update({f"target.{key}": value for key, value in self.target.state_dict().items()})
