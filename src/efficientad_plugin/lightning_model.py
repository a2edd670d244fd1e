"""EfficientAD as an anomalib model: training, map normalisation and export wiring (paper Algorithm 1)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.utils import ValSplitMode
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Compose, Resize

from .anomaly_map import MAP_PADDING, add_missing_branch_weights
from .augmentation import random_color_adjustment, random_crop
from .autoencoder import check_image_size
from .branches import (
    SYNTHETIC_SEED,
    BranchChoice,
    BranchMetrics,
    branch_scores,
    check_branch_weights,
    choose_branch_weights,
    image_aurocs,
    synthetic_anomalies,
)
from .callbacks import NonFiniteLossGuard, ResumableDataOrder, StepCheckpoint
from .hardware import cpu_description, cpu_has_native_bf16
from .input_checks import check_datamodule, check_one_size_per_batch, parse_val_split_mode
from .loss import EfficientAdLoss
from .pdn import check_model_size, load_pdn_state_dict
from .penalty import BUNDLED, PenaltyImages
from .post_processing import FalseAlarmRatePostProcessor
from .randomness import AUGMENTATION_STREAM, step_generator
from .schedules import check_warmup_fraction, keep_position_only, one_cycle, paper_step_decay
from .teacher_cache import TeacherCache, uncacheable_reason
from .teacher_weights import is_paper_teacher, load_teacher_state_dict
from .torch_model import EfficientAdPluginModel

logger = logging.getLogger(__name__)

# Timing the student's two CPU passes costs about 20 s (six passes on three 256x256 images); from this many steps
# (about 17 min of fp32 steps on a 2-core CPU) a 10 % faster pass repays it many times over.
MEASURE_STUDENT_PASS_FROM_STEPS = 500


def measures_student_pass(max_steps: int) -> bool:
    """Whether a run of ``max_steps`` times the student's batched and per-image passes (on CPU) and takes the faster."""
    return max_steps >= MEASURE_STUDENT_PASS_FROM_STEPS

_NO_VALIDATION_IMAGES = (
    "EfficientAdPlugin needs validation images of normal parts to fit its map normalisation after training. "
    "Set --data.val_split_mode from_train (the paper holds out 10 % of the training images)."
)
LR_SCHEDULES = ("paper", "one_cycle")
NATIVE = "native"
# Peak memory of scoring one megapixel in native mode, fp32 on CPU (efficientad-bench-inference --native_sizes)
MIB_PER_MEGAPIXEL = 1500.0


def check_local_size(local_size: str | int | tuple[int, int] | list[int] | None,
                     image_size: tuple[int, int]) -> str | tuple[int, int] | None:
    """``local_size`` as ``None``, ``"native"`` or ``(height, width)``, refused (naming it) when it cannot hold one
    ``image_size`` crop."""
    if local_size is None or local_size == NATIVE:
        return local_size
    if isinstance(local_size, str):
        msg = f"local_size must be None (off), {NATIVE!r} or (height, width); got {local_size!r}."
        raise ValueError(msg)
    size = (local_size, local_size) if isinstance(local_size, int) else tuple(int(side) for side in local_size)
    if len(size) != 2 or size[0] < image_size[0] or size[1] < image_size[1]:
        msg = (f"local_size {local_size!r} must be (height, width) at least image_size {image_size}: the student "
               f"trains on image_size crops of the image at local_size. Lower image_size or raise local_size.")
        raise ValueError(msg)
    return size  # type: ignore[return-value]


class EfficientAdPlugin(AnomalibModule):
    """EfficientAD (Batzner et al., WACV 2024), trained and normalised as in the paper.

    Args:
        model_size: ``"small"`` (EfficientAD-S) or ``"medium"`` (EfficientAD-M).
        teacher_weights: a known entry (``"DEFAULT"``: anomalib's release of the paper's teacher), a path to a
            teacher ``.pth``, or ``"untrained"`` for tests and speed benchmarks only.
        penalty_dir: folder of natural images for the pretraining penalty (ImageNet in the paper); ``"bundled"``
            is a small public-domain set shipped with the package (ImageNet or Imagenette is better);
            ``None`` trains without it, which costs accuracy on logical anomalies.
        image_size: ``(height, width)`` the images are resized to; at least 256 per side.
        max_steps: training steps (batch 1), 70,000 in the paper; passed to the trainer.
        lr: Adam learning rate (the peak rate of ``one_cycle``).
        lr_schedule: ``"paper"``: constant, x0.1 for the last 5 % of ``max_steps``; ``"one_cycle"``: warm-up from
            lr/25, cosine decay to lr/2500 over ``max_steps`` (the fast preset's). A run resumed with another
            ``max_steps`` follows the schedule of the new budget.
        warmup_fraction: ``one_cycle``'s share of ``max_steps`` spent warming up.
        weight_decay: Adam weight decay.
        checkpoint_every_n_steps: save a resumable ``last_step.ckpt`` beside ``model.ckpt`` this often, so that an
            interrupted run loses at most this many steps (resume with ``--ckpt_path``).
        teacher_cache_mib: memory for the teacher's outputs on the training images, computed once and reused in
            later epochs when the training data is not randomly augmented; ``0`` turns the cache off.
        branch_weights: how the normalised local (student-teacher) and global (autoencoder) maps are combined:
            ``"paper"``: 0.5 / 0.5 (reproduction); ``"auto"`` (default): decided after training from the normal
            validation images only (``branches``): the paper's average once the autoencoder has learnt; before that
            the local map alone, unless the average (or the global map alone) separates synthetic anomalies better
            by more than 0.01. The weights are logged, saved in the checkpoint and exported.
        local_size: native-resolution mode for small defects; ``None`` (default) is off: every image is resized to
            ``image_size`` as anomalib does. ``"native"``: the local (student-teacher) branch scores each image at
            its own size; ``(height, width)``: at that size. The student trains on random ``image_size`` crops of it,
            the global (autoencoder) branch sees the whole image resized to ``image_size``, and the anomaly map
            comes at the local branch's size. Images of different sizes need ``eval_batch_size`` 1.
        autoencoder_start: share of ``max_steps`` trained before the global branch starts learning: until then a
            step trains the student's teacher-mimicking half only (hard loss and penalty) and skips the passes of
            the teacher, autoencoder and student on the augmented image, about a third of a step's arithmetic.
            ``0`` (default) is the paper: every loss from the first step.
        map_smoothing_sigma: standard deviation in pixels (of the map at the scored image's size) of a Gaussian
            that smooths the anomaly map, as anomalib's PatchCore does with 4; the image score stays the unsmoothed
            map's maximum. ``0`` (default) is the paper: no smoothing. Applied after training, exported, and may
            differ from the sigma a checkpoint was evaluated with.
        max_image_megapixels: refuse (naming the image) to score an image larger than this in native mode, before
            it can exhaust memory: scoring needs about ``MIB_PER_MEGAPIXEL`` MiB per megapixel in fp32.
        pre_processor, post_processor, evaluator, visualizer: anomalib components, or ``True`` for the defaults.
    """

    def __init__(
        self,
        model_size: str = "small",
        teacher_weights: str | Path = "DEFAULT",
        penalty_dir: str | Path | None = BUNDLED,
        image_size: tuple[int, int] | int = (256, 256),
        max_steps: int = 70_000,
        lr: float = 1e-4,
        lr_schedule: str = "paper",
        warmup_fraction: float = 0.05,
        weight_decay: float = 1e-5,
        checkpoint_every_n_steps: int = 5_000,
        teacher_cache_mib: float = 1024,
        branch_weights: str = "auto",
        local_size: str | tuple[int, int] | None = None,
        autoencoder_start: float = 0.0,
        max_image_megapixels: float = 16.0,
        map_smoothing_sigma: float = 0.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: torch.nn.Module | bool = True,
        evaluator: Any = True,  # noqa: ANN401 (anomalib's Evaluator | bool)
        visualizer: Any = True,  # noqa: ANN401 (anomalib's Visualizer | bool)
    ) -> None:
        image_size = check_image_size(image_size)
        check_model_size(model_size)
        if max_steps < 1:
            msg = f"max_steps must be a positive number of training steps, got {max_steps}."
            raise ValueError(msg)
        if lr_schedule not in LR_SCHEDULES:
            msg = f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}."
            raise ValueError(msg)
        check_warmup_fraction(warmup_fraction)
        if teacher_cache_mib < 0:
            msg = f"teacher_cache_mib must be 0 (no cache) or a positive number of MiB, got {teacher_cache_mib}."
            raise ValueError(msg)
        check_branch_weights(branch_weights)
        local_size = check_local_size(local_size, image_size)
        if not 0 <= autoencoder_start < 1:
            msg = (f"autoencoder_start must be a share of max_steps in [0, 1), got {autoencoder_start}: the "
                   "autoencoder has to train for some steps. 0 trains it from the first step, as the paper does.")
            raise ValueError(msg)
        if max_image_megapixels <= 0:
            msg = f"max_image_megapixels must be positive, got {max_image_megapixels}."
            raise ValueError(msg)
        step_checkpoint = StepCheckpoint(checkpoint_every_n_steps)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size, local_size)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model_size = model_size
        self.teacher_weights = str(teacher_weights)
        self.penalty_dir = penalty_dir
        self.image_size = image_size
        self.max_steps = max_steps
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction
        self.weight_decay = weight_decay
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.step_checkpoint = step_checkpoint
        self.teacher_cache_mib = teacher_cache_mib
        self.teacher_cache: TeacherCache | None = None
        self.branch_weights = branch_weights
        self.branch_choice: BranchChoice | None = None  # set when the map normalisation is fitted
        self.branch_metrics: BranchMetrics | None = None  # while testing
        self._metric_size: tuple[int, int] | None = None  # native mode: the grid test maps are measured on
        self.local_size = local_size
        self.autoencoder_start = autoencoder_start
        self.max_image_megapixels = max_image_megapixels
        self.map_smoothing_sigma = map_smoothing_sigma
        self.model = EfficientAdPluginModel(model_size, image_size, native=local_size is not None,
                                            map_smoothing_sigma=map_smoothing_sigma)
        self.loss = EfficientAdLoss()
        self.penalty_images: PenaltyImages | None = None

    def configure_callbacks(self) -> list[Callback]:
        """anomalib's components; a checkpoint every ``checkpoint_every_n_steps`` steps, exact resume, NaN guard."""
        return [*super().configure_callbacks(), self.step_checkpoint, ResumableDataOrder(), NonFiniteLossGuard()]

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None,
                                local_size: str | tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (to ``local_size`` in native mode; none with ``"native"``): the ImageNet normalisation and
        the global branch's resize are part of the model."""
        if local_size == NATIVE:
            return PreProcessor(transform=None)
        return PreProcessor(transform=Compose([Resize(local_size or image_size or (256, 256), antialias=True)]))

    def configure_post_processor(self) -> FalseAlarmRatePostProcessor:
        """anomalib's post-processor, with thresholds at a 1 % false-alarm rate when validation has no defects."""
        return FalseAlarmRatePostProcessor()

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """The paper's step budget, with one validation at its end (where the map quantiles are fitted)."""
        return {
            "max_steps": self.max_steps,
            "max_epochs": -1,
            "val_check_interval": self.max_steps,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
        }

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on student and autoencoder, with ``lr_schedule`` over ``max_steps``, stepped per training step."""
        parameters = [*self.model.student.parameters(), *self.model.autoencoder.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "one_cycle":
            scheduler = one_cycle(optimizer, self.lr, self.max_steps, self.warmup_fraction)
        else:
            scheduler = paper_step_decay(optimizer, self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore anomalib's components; take the schedule's shape from this model; ignore foreign metric states.

        A checkpoint trained with other test metrics (e.g. AU-PRO, whose ``fpr_limit`` is a buffer) would
        otherwise fail to load with "Unexpected key(s)": the metrics are evaluation settings, not the model.
        The evaluator's state sits twice in a checkpoint: in the model's state dict and as a callback's state.
        """
        super().on_load_checkpoint(checkpoint)
        add_missing_branch_weights(checkpoint.get("state_dict", {}), "model.anomaly_map_generator.")
        self._add_missing_global_statistics(checkpoint.get("state_dict", {}))
        choice = checkpoint.get("branch_choice")  # None in checkpoints from before branch weights (0.5 / 0.5)
        self.branch_choice = None if choice is None else BranchChoice.from_dict(choice)
        keep_position_only(checkpoint.get("lr_schedulers", []))  # the schedule follows this run's max_steps
        own = self.state_dict().keys()
        model_state = checkpoint.get("state_dict", {})
        foreign = [key for key in model_state if key.startswith("evaluator.") and key not in own]
        callback_state = checkpoint.get("callbacks", {}).get(getattr(self.evaluator, "state_key", None), {})
        foreign += [f"evaluator.{key}" for key in callback_state if f"evaluator.{key}" not in own]
        for key in foreign:
            model_state.pop(key, None)
            callback_state.pop(key.removeprefix("evaluator."), None)
        if foreign:
            logger.info("Ignoring metric states that this model's evaluator lacks: %s", ", ".join(sorted(set(foreign))))

    def _add_missing_global_statistics(self, state_dict: dict[str, torch.Tensor]) -> None:
        """A native-mode checkpoint from before the global view had its own teacher statistics used the full-size
        images' for both branches: load it so, with a warning (its autoencoder learnt from those targets)."""
        if not self.model.native or "model.teacher_mean" not in state_dict:
            return
        missing = [name for name in ("mean", "std") if f"model.global_teacher_{name}" not in state_dict]
        for name in missing:
            state_dict[f"model.global_teacher_{name}"] = state_dict[f"model.teacher_{name}"].clone()
        if missing:
            logger.warning("This native-mode checkpoint has no teacher statistics of the global branch's view: "
                           "using the full-size ones, as it was trained. Retrain for a global branch that learns.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """anomalib's components, and the branch weights' choice with its reasons (the weights are a buffer)."""
        super().on_save_checkpoint(checkpoint)
        if self.branch_choice is not None:
            checkpoint["branch_choice"] = self.branch_choice.to_dict()

    def _images(self, batch: Batch) -> torch.Tensor:
        """Batch images at the model's size, checked, on the model's device."""
        transform = getattr(self.pre_processor, "transform", None)
        images = transform(batch.image) if transform is not None else batch.image
        if self.local_size is not None:
            self._check_native_size(images, batch)
        elif tuple(images.shape[-2:]) != self.image_size:
            msg = (
                f"Images reach the model at {tuple(images.shape[-2:])} but image_size is {self.image_size}: "
                f"the pre_processor must resize to image_size."
            )
            raise ValueError(msg)
        return images.to(self.device)

    def _check_native_size(self, images: torch.Tensor, batch: Batch) -> None:
        """Native mode: every image holds an ``image_size`` crop and fits ``max_image_megapixels``."""
        height, width = images.shape[-2:]
        path = (getattr(batch, "image_path", None) or ["<an image without a path>"])[0]
        if height < self.image_size[0] or width < self.image_size[1]:
            msg = (f"{path} is {height}x{width} px at the local branch, smaller than image_size {self.image_size} "
                   f"(the training crop and the global branch's view). Lower image_size, or set local_size to a "
                   f"size of at least image_size.")
            raise ValueError(msg)
        megapixels = len(images) * height * width / 1e6
        if megapixels > self.max_image_megapixels:
            msg = (f"{path} (batch of {len(images)}) is {height}x{width} px = {megapixels:.1f} megapixels, above "
                   f"max_image_megapixels {self.max_image_megapixels:g} (about {MIB_PER_MEGAPIXEL:g} MiB each in "
                   f"fp32, {megapixels * MIB_PER_MEGAPIXEL:.0f} MiB here). Score it at a smaller local_size, with "
                   f"eval_batch_size 1, or raise max_image_megapixels if the memory is there.")
            raise ValueError(msg)

    def on_fit_start(self) -> None:
        """Check before any training work: bf16 only where native, every file decodes, validation fits the maps."""
        precision = str(getattr(self.trainer, "precision", "32"))
        if "bf16" in precision and self.device.type == "cpu" and not cpu_has_native_bf16():
            msg = (
                f"--trainer.precision {precision} on a CPU without native bf16 ({cpu_description()}): torch emulates "
                f"bf16 there, about 30x slower than fp32. Train with --trainer.precision 32 on this machine."
            )
            raise ValueError(msg)
        if self.trainer.datamodule is not None:
            sizes = check_datamodule(self.trainer.datamodule)
            if self.local_size == NATIVE:
                check_one_size_per_batch(sizes, getattr(self.trainer.datamodule, "eval_batch_size", 1))
        val_split_mode = parse_val_split_mode(getattr(self.trainer.datamodule, "val_split_mode", None))
        if val_split_mode == ValSplitMode.NONE:
            raise ValueError(_NO_VALIDATION_IMAGES)
        if val_split_mode == ValSplitMode.SAME_AS_TEST:
            warnings.warn(
                "val_split_mode is same_as_test: the map-normalisation quantiles and thresholds will be fitted on the "
                "test images, which leaks test data into the model. Use --data.val_split_mode from_train.",
                stacklevel=1,
            )

    def _check_dataloaders(self) -> None:
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", 1)
        if batch_size != 1:
            msg = (
                f"EfficientAdPlugin trains with batch size 1 as in the paper (the hard-feature loss and the step "
                f"budget assume it), got train_batch_size={batch_size}. Set --data.train_batch_size 1."
            )
            raise ValueError(msg)
        if sum(self.trainer.num_val_batches) == 0:
            raise ValueError(_NO_VALIDATION_IMAGES)

    def _prepare_teacher(self) -> None:
        state_dict, description = load_teacher_state_dict(self.teacher_weights, self.model_size)
        if state_dict is None:
            warnings.warn(
                "teacher_weights='untrained': the teacher is random. Use this for tests and speed benchmarks only.",
                stacklevel=1,
            )
        else:
            load_pdn_state_dict(self.model.teacher, state_dict, description)
            logger.info("Teacher: %s", description)
            if not is_paper_teacher(self.teacher_weights, self.model_size):
                logger.warning("Teacher %s is not the paper's (WideResNet-101-2 on ImageNet): results may differ "
                               "from the paper's.", description)

    def _statistics_loader(self) -> DataLoader:
        """The training images in file order, in a loader of their own.

        Iterating the training loader here would move its checkpointed position and draw from the global RNG, so a
        resumed run, which skips this pass, would see other images than an uninterrupted one.
        """
        loader = self.trainer.train_dataloader
        return DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                          num_workers=loader.num_workers)

    def on_train_start(self) -> None:
        """Check the data, then load the teacher, list the penalty images and compute the teacher statistics."""
        self._check_dataloaders()
        if self.penalty_dir is None:
            warnings.warn(
                "penalty_dir is None: training without the pretraining penalty (paper §3.2), which the paper finds "
                "costs accuracy, most of all on logical anomalies. Pass a folder of natural images as penalty_dir.",
                stacklevel=1,
            )
        else:
            self.penalty_images = PenaltyImages(self.penalty_dir, self.image_size)
            logger.info("Penalty images: %d from %s", len(self.penalty_images), self.penalty_images.folder)
            if str(self.penalty_dir) == BUNDLED:
                logger.info("The bundled penalty set is small; a folder of ImageNet/Imagenette images is better.")
        if not self.model.has_teacher_statistics:  # a fresh run; a resumed one has both in its checkpoint
            self._prepare_teacher()
            self.model.fit_teacher_statistics(self._images(batch) for batch in self._statistics_loader())
        self.teacher_cache = self._new_teacher_cache()
        self.model.measure_student_pass = measures_student_pass(self.max_steps)

    def _new_teacher_cache(self) -> TeacherCache | None:
        """A cache for this run's teacher outputs, or ``None``, with a log line saying why, when none can be used."""
        reason = "teacher_cache_mib is 0" if self.teacher_cache_mib == 0 else (
            "native mode trains on random crops" if self.local_size is not None else None) or uncacheable_reason(
            getattr(self.trainer.train_dataloader, "dataset", None), self.pre_processor)
        if reason:
            logger.info("Teacher cache off: %s; the teacher runs on every training image at every step.", reason)
            return None
        logger.info("Teacher cache on: up to %g MiB of teacher outputs, reused after the first epoch.",
                    self.teacher_cache_mib)
        return TeacherCache(self.teacher_cache_mib)

    def on_train_end(self) -> None:
        """Free the teacher cache's memory: testing and export do not use it."""
        self.teacher_cache = None

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step of Algorithm 1: hard loss, penalty, autoencoder and student-autoencoder losses."""
        del args, kwargs
        penalty = None
        if self.penalty_images is not None:
            penalty = self.penalty_images.sample(self.global_step, torch.initial_seed()).to(batch.image)
        generator = step_generator(torch.initial_seed(), self.global_step, AUGMENTATION_STREAM)
        images = batch.image
        if self.local_size is not None:  # native mode: the student-teacher loss on a crop, the rest on the whole
            self._check_native_size(images, batch)
            images = random_crop(images, self.image_size, generator)
        augmented = None  # the global branch's input, from autoencoder_start on
        if self.global_step >= self.autoencoder_start * self.max_steps:
            whole = batch.image if self.local_size is None else self.model.resized(batch.image)
            augmented = random_color_adjustment(whole, generator)
        teacher = None
        if self.teacher_cache is not None:
            teacher = self.teacher_cache.lookup(batch.image_path, lambda: self.model.teacher_features(batch.image))
        features = self.model.training_features(images, augmented, penalty, teacher)
        losses = self.loss(features)
        self.log_dict({f"train_{name}": value for name, value in losses.items()}, on_step=True, prog_bar=True)
        return losses["loss"]

    @torch.no_grad()
    def _fit_map_quantiles(self) -> None:
        """Fit the maps' quantiles on the normal validation images, measure what each network has learnt there and
        set the branch weights (``branch_weights``); with ``auto`` each image also gets a synthetic anomaly."""
        loaders = self.trainer.val_dataloaders
        maps: dict[str, list[torch.Tensor]] = {"st": [], "ae": [], "learnt": [], "synthetic_st": [], "synthetic_ae": []}
        self.model.eval()
        with self._full_precision():
            for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
                for batch in loader:
                    images = self._images(batch)
                    if batch.gt_label is not None:
                        images = images[batch.gt_label.to(images.device) == 0]
                    if not len(images):
                        continue
                    st_map, ae_map, learnt = self.model.maps_and_learning(images)
                    maps["st"].append(st_map)
                    maps["ae"].append(ae_map)
                    maps["learnt"].append(learnt)
                    if self.branch_weights == "auto":
                        seed = SYNTHETIC_SEED + len(maps["synthetic_st"])
                        synthetic_st, synthetic_ae = self.model.raw_maps(synthetic_anomalies(images, seed))
                        maps["synthetic_st"].append(synthetic_st)
                        maps["synthetic_ae"].append(synthetic_ae)
        if not maps["st"]:
            raise ValueError(_NO_VALIDATION_IMAGES)
        generator = self.model.anomaly_map_generator
        # flattened: in native mode the validation images (and so their maps) may differ in size
        generator.fit(*(torch.cat([part.flatten() for part in maps[key]]) for key in ("st", "ae")))
        learnt = torch.cat(maps["learnt"])
        student, autoencoder = (float(value) for value in learnt.mean(dim=0))
        synthetic = None
        if maps["synthetic_st"]:
            normal, anomalous = (self._branch_scores(maps[st], maps[ae]) for st, ae in
                                 (("st", "ae"), ("synthetic_st", "synthetic_ae")))
            synthetic = image_aurocs(normal, anomalous)
        self.branch_choice = choose_branch_weights(self.branch_weights, (student, autoencoder), synthetic,
                                                   normal_images=len(learnt))
        generator.set_branch_weights(*self.branch_choice.weights)
        logger.info("Explained variance of the normalised teacher features on %d normal validation images: "
                    "student %.3f, autoencoder %.3f", len(learnt), student, autoencoder)
        logger.info("Branch weights (local, global) = (%g, %g): %s", *self.branch_choice.weights,
                    self.branch_choice.reason)

    def _branch_scores(self, st_maps: list[torch.Tensor], ae_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``branch_scores`` of raw maps batch by batch; in native mode on the image's grid, where the two branches
        meet (their own grids differ)."""
        generator, parts = self.model.anomaly_map_generator, []
        for st_map, ae_map in zip(st_maps, ae_maps, strict=True):
            if self.model.native:
                size = tuple(4 * (side + 2 * MAP_PADDING) for side in st_map.shape[-2:])
                parts.append(branch_scores(*generator.branch_maps(st_map, ae_map, size)))
            else:
                parts.append(branch_scores(*generator.normalised(st_map, ae_map)))
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def on_validation_epoch_end(self) -> None:
        """Log what the networks have learnt and the branch weights (measured on normal validation images)."""
        if self.branch_choice is None or self.branch_choice.explained_variance is None:
            return
        student, autoencoder = self.branch_choice.explained_variance
        self.log_dict({"val_student_explained_variance": student,
                       "val_autoencoder_explained_variance": autoencoder,
                       "val_global_branch_weight": self.branch_choice.weights[1]}, prog_bar=False)

    def _full_precision(self) -> torch.autocast:
        """Mixed precision off: what fits or applies the map normalisation is fp32, like the export it ends up in."""
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_start(self) -> None:
        """Fit the map quantiles on the normal validation images after training (or when none are fitted yet)."""
        if self.trainer.state.fn == TrainerFn.FITTING or not self.model.anomaly_map_generator.is_fitted:
            self._fit_map_quantiles()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Normalised maps and scores, in fp32 also under mixed precision, as in the export.

        The post-processor fits its thresholds and score ranges on the validation scores; test and predict run
        the same way, so their scores are on that scale.
        """
        del args, kwargs
        if self.local_size is not None:
            self._check_native_size(batch.image, batch)
        with self._full_precision():
            return batch.update(**self.model(batch.image)._asdict())

    predict_step = validation_step

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As ``validation_step``, and each branch alone and the paper's average measured against the labels."""
        del args, kwargs
        if self.local_size is not None:
            self._check_native_size(batch.image, batch)
        with self._full_precision():
            st_map, ae_map = self.model.raw_maps(batch.image)
            size = tuple(batch.image.shape[-2:])
            prediction = self.model.prediction(st_map, ae_map, size)._asdict()
            branch_maps = self.model.anomaly_map_generator.branch_maps(st_map, ae_map, size)
        if self.local_size == NATIVE:
            self._metric_size = self._metric_size or size
            if size != self._metric_size:
                # anomalib's pixel metrics concatenate the maps of all batches: an image of another size than the
                # first is measured on the first's grid (maps and image bilinear, mask nearest); its score is its own
                prediction["anomaly_map"], *branch_maps = (F.interpolate(value, size=self._metric_size,
                                                                         mode="bilinear")
                                                           for value in (prediction["anomaly_map"], *branch_maps))
                batch.update(image=F.interpolate(batch.image, size=self._metric_size, mode="bilinear"),
                             gt_mask=None if batch.gt_mask is None else F.interpolate(
                                 batch.gt_mask[:, None].float(), size=self._metric_size, mode="nearest")[:, 0] > 0)
        if self.branch_metrics is not None:
            self.branch_metrics.update(*branch_maps, batch.gt_label, batch.gt_mask,
                                       smooth=self.model.anomaly_map_generator.smooth)
        return batch.update(**prediction)

    def on_test_start(self) -> None:
        """Refuse to test an unfitted model; start the branches' metrics."""
        self._require_fitted("test")
        self.branch_metrics = BranchMetrics()
        self._metric_size = None

    def on_test_epoch_end(self) -> None:
        """Log image AUROC, pixel AUROC and AU-PRO of each branch alone and of the paper's average."""
        if self.branch_metrics is not None:
            self.log_dict(self.branch_metrics.compute())
            self.branch_metrics = None

    def _require_fitted(self, action: str) -> None:
        if not self.model.anomaly_map_generator.is_fitted:
            msg = f"Cannot {action} an untrained EfficientAdPlugin: train it first or load a checkpoint (--ckpt_path)."
            raise RuntimeError(msg)

    def on_predict_start(self) -> None:
        """Refuse to predict with an unfitted model."""
        self._require_fitted("predict with")

    def to_onnx(self, *args, **kwargs) -> Path:
        """Export to ONNX (OpenVINO goes through here too); the maps' quantiles must be fitted."""
        self._require_fitted("export")
        if len(args) > 2:  # (export_root, model_file_name, input_size, ...) as anomalib's to_openvino passes them
            kwargs["input_size"], args = args[2], args[:2] + args[3:]
        if self.local_size == NATIVE and kwargs.get("input_size") is None:
            # anomalib traces a dynamic-size graph on a 32x32 example, too small for the local branch. Trace on one
            # pixel more than image_size (at image_size exactly the global branch's resize is traced as a no-op and
            # the graph specialises to that size); the graph takes any size, image_size included
            height, width = self.image_size
            kwargs["input_size"] = self.image_size
            kwargs.setdefault("dynamic_shapes", ({0: torch.export.Dim("batch_size"),
                                                  2: torch.export.Dim("height", min=height + 1),
                                                  3: torch.export.Dim("width", min=width + 1)},))
        return super().to_onnx(*args, **kwargs)

    def to_openvino(self, *args, **kwargs) -> Path:
        """Export to OpenVINO with the metadata OpenVINO Model API reads (``model_info``), so it loads the IR as is."""
        from .model_info import write_model_info

        height, width = self.image_size
        extra = {"model_name": type(self).__name__, "image_size": f"{height} {width}"}
        if self.local_size is not None:  # the graph scores each image at its own size (or resizes to local_size)
            extra["local_size"] = self.local_size if self.local_size == NATIVE else " ".join(map(str, self.local_size))
        return write_model_info(super().to_openvino(*args, **kwargs), **extra)
