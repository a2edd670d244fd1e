"""The EfficientAD networks and their state, without Lightning (paper §3, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .anomaly_map import AnomalyMapGenerator, channel_mean_squared_error
from .autoencoder import AutoEncoder, check_image_size
from .pdn import TEACHER_CHANNELS, PatchDescriptionNetwork
from .statistics import ChannelStatistics

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The student's output channels: the first half mimics the teacher, the second half the autoencoder.
_TEACHER_MIMICKING = slice(0, TEACHER_CHANNELS)
_AUTOENCODER_MIMICKING = slice(TEACHER_CHANNELS, 2 * TEACHER_CHANNELS)


class TrainingFeatures(NamedTuple):
    """Network outputs of one training step, teacher outputs already normalised per channel."""

    teacher: torch.Tensor
    student: torch.Tensor  # the student's teacher-mimicking channels on the training image
    student_penalty: torch.Tensor | None  # the same channels on the penalty image, ``None`` without a penalty set
    # The global branch's outputs on the augmented image, ``None`` in steps that do not train the autoencoder
    teacher_augmented: torch.Tensor | None
    autoencoder_augmented: torch.Tensor | None
    student_augmented: torch.Tensor | None  # the student's autoencoder-mimicking channels on the augmented image


class EfficientAdPluginModel(nn.Module):
    """Teacher, student and autoencoder, with the teacher's channel statistics and the map quantiles as buffers.

    Inputs are RGB images in [0, 1] of ``image_size``; ImageNet normalisation happens here, once for all three
    networks. In eval mode ``forward`` is a pure tensor function (exportable) returning an ``InferenceBatch``.

    With ``native`` the inputs may have any size of at least ``image_size``: the local (student-teacher) branch runs
    on them as they are, the global (autoencoder) branch on them resized to ``image_size``, and each branch's map is
    upsampled to the input's size before they are combined. ``map_smoothing_sigma`` smooths the anomaly map
    (``AnomalyMapGenerator``); the image score stays the unsmoothed map's maximum, as in the paper.
    """

    def __init__(self, model_size: str = "small", image_size: tuple[int, int] = (256, 256),
                 native: bool = False, map_smoothing_sigma: float = 0.0) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.native = native
        self.teacher = PatchDescriptionNetwork(model_size, TEACHER_CHANNELS)
        self.teacher.requires_grad_(False)
        self.student = PatchDescriptionNetwork(model_size, 2 * TEACHER_CHANNELS)
        self.autoencoder = AutoEncoder(self.image_size, TEACHER_CHANNELS)
        self.anomaly_map_generator = AnomalyMapGenerator(native, map_smoothing_sigma)
        # on CPU, time the student's batched and per-image training passes once and use the faster (pdn.py); the
        # Lightning model turns it on for runs long enough to repay the seconds it costs
        self.measure_student_pass = False
        self.register_buffer("teacher_mean", torch.full((1, TEACHER_CHANNELS, 1, 1), torch.nan))
        self.register_buffer("teacher_std", torch.full((1, TEACHER_CHANNELS, 1, 1), torch.nan))
        if native:  # the teacher's statistics on the global branch's view (the image resized to image_size)
            self.register_buffer("global_teacher_mean", torch.full((1, TEACHER_CHANNELS, 1, 1), torch.nan))
            self.register_buffer("global_teacher_std", torch.full((1, TEACHER_CHANNELS, 1, 1), torch.nan))
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_teacher_statistics(self) -> bool:
        """Whether the teacher's channel mean and std have been computed."""
        buffers = [self.teacher_mean, self.teacher_std]
        if self.native:
            buffers += [self.global_teacher_mean, self.global_teacher_std]
        return not any(bool(torch.isnan(buffer).any()) for buffer in buffers)

    def _imagenet_normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.imagenet_mean) / self.imagenet_std

    def _teacher_features(self, normalised_images: torch.Tensor, global_view: bool = False) -> torch.Tensor:
        """Standardised teacher outputs; ``global_view``: of the global branch's view (own statistics in native)."""
        mean, std = self.teacher_mean, self.teacher_std
        if global_view and self.native:
            mean, std = self.global_teacher_mean, self.global_teacher_std
        with torch.no_grad():
            # float(): under mixed precision the teacher may run in bf16; the normalised targets stay fp32
            return (self.teacher(normalised_images).float() - mean) / std

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's output on images in [0, 1], normalised per channel (fp32, no gradient)."""
        return self._teacher_features(self._imagenet_normalise(images))

    @torch.no_grad()
    def fit_teacher_statistics(self, images: Iterable[torch.Tensor]) -> None:
        """Per-channel mean and std of the teacher over ``images`` (``statistics.ChannelStatistics``).

        In native mode also over the images resized to ``image_size``, the global branch's view: the teacher's
        features there differ from those at full size, and the autoencoder's targets must be standardised too.
        """
        device = self.teacher_mean.device
        # (statistics, the view the teacher sees, its buffers)
        targets = [(ChannelStatistics(), None, self.teacher_mean, self.teacher_std)]
        if self.native:
            targets.append((ChannelStatistics(), self.resized, self.global_teacher_mean, self.global_teacher_std))
        for batch in images:
            batch = batch.to(device)
            with torch.autocast(device.type, enabled=False):  # fp32 statistics also in a mixed-precision run
                for statistics, view, *_ in targets:
                    statistics.update(self.teacher(self._imagenet_normalise(view(batch) if view else batch)))
        if not targets[0][0].count:
            msg = "Cannot compute the teacher's channel statistics: the training set is empty."
            raise ValueError(msg)
        for statistics, _, mean_buffer, std_buffer in targets:
            mean, std = statistics.compute()
            mean_buffer.copy_(mean.view_as(mean_buffer))
            std_buffer.copy_(std.view_as(std_buffer))

    def training_features(
        self,
        images: torch.Tensor,
        augmented_images: torch.Tensor | None,
        penalty_images: torch.Tensor | None,
        teacher: torch.Tensor | None = None,
    ) -> TrainingFeatures:
        """Every network output the training losses need, in fp32 also under mixed precision.

        ``teacher`` is ``teacher_features(images)`` when it is already known (a cached output); the teacher's pass
        on the augmented images is never cacheable, as the augmentation is drawn anew at every step. Without
        ``augmented_images`` the global branch's passes (teacher, autoencoder, student) are skipped.
        """
        images = self._imagenet_normalise(images)
        if teacher is None:
            teacher = self._teacher_features(images)
        # One student pass for all images; each gets only the channels its loss uses.
        inputs, channels = [images], [_TEACHER_MIMICKING]
        if augmented_images is not None:
            augmented_images = self._imagenet_normalise(augmented_images)
            inputs.append(augmented_images)
            channels.append(_AUTOENCODER_MIMICKING)
        if penalty_images is not None:
            inputs.append(self._imagenet_normalise(penalty_images))
            channels.append(_TEACHER_MIMICKING)
        outputs = self.student.partial_outputs(inputs, channels, measure=self.measure_student_pass)
        student, student_penalty = outputs[0], outputs[-1] if penalty_images is not None else None
        global_branch: tuple[torch.Tensor | None, ...] = (None, None, None)
        if augmented_images is not None:
            global_branch = (self._teacher_features(augmented_images, global_view=True),
                             self.autoencoder(augmented_images).float(), outputs[1].float())
        return TrainingFeatures(
            teacher,
            student.float(),
            student_penalty.float() if student_penalty is not None else None,
            *global_branch,
        )

    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised, unpadded student-teacher and autoencoder maps ``[B, 1, h, w]``."""
        st_map, ae_map, _ = self._maps(images, autoencoder_error=False)
        return st_map, ae_map

    def resized(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` at ``image_size``, bilinear: the global branch's view in native mode.

        Not antialiased, in training as in the export: OpenVINO computes an antialiased resize of a dynamic-size
        input wrongly (up to 0.2 off on [0, 1] images here), which is also why anomalib exports its pre-processor's
        ``Resize`` without antialiasing."""
        return F.interpolate(images, size=self.image_size, mode="bilinear")

    def _maps(self, images: torch.Tensor,
              autoencoder_error: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.native:
            return self._native_maps(images, autoencoder_error)
        images = self._imagenet_normalise(images)
        teacher = self._teacher_features(images)
        student = self.student(images)
        autoencoder = self.autoencoder(images)
        st_map = channel_mean_squared_error(teacher, student[:, :TEACHER_CHANNELS])
        ae_map = channel_mean_squared_error(autoencoder, student[:, TEACHER_CHANNELS:])
        return st_map, ae_map, channel_mean_squared_error(teacher, autoencoder) if autoencoder_error else None

    def _native_maps(self, images: torch.Tensor,
                     autoencoder_error: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # each student pass computes only the channels its branch uses: half of the last convolution on the large
        # input is the autoencoder-mimicking half, which the local branch does not need
        local = self._imagenet_normalise(images)
        global_ = self._imagenet_normalise(self.resized(images))
        student_local, student_global = self.student.partial_outputs(
            [local, global_], [_TEACHER_MIMICKING, _AUTOENCODER_MIMICKING], batched=False)
        autoencoder = self.autoencoder(global_)
        st_map = channel_mean_squared_error(self._teacher_features(local), student_local)
        ae_map = channel_mean_squared_error(autoencoder, student_global)
        if not autoencoder_error:
            return st_map, ae_map, None
        return st_map, ae_map, channel_mean_squared_error(self._teacher_features(global_, global_view=True),
                                                          autoencoder)

    def maps_and_learning(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``raw_maps`` and, per image, how much each network has learnt of the teacher: ``[B, 2]``.

        The columns are the explained variance (1 - mean squared error over channels and pixels) of the normalised
        teacher features by the student's teacher-mimicking channels and by the autoencoder. The teacher's outputs
        are normalised to unit variance per channel, so predicting each channel's mean scores about 0 and a perfect
        copy 1; on normal images this says whether a branch has learnt anything, without a defect.
        """
        st_map, ae_map, teacher_ae_map = self._maps(images, autoencoder_error=True)
        errors = torch.stack([st_map.mean(dim=(1, 2, 3)), teacher_ae_map.mean(dim=(1, 2, 3))], dim=1)
        return st_map, ae_map, 1 - errors

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly map ``[B, 1, H, W]`` and image score ``[B, 1]`` (the map's maximum) of images ``[B, 3, H, W]``."""
        return self.prediction(*self.raw_maps(images), images.shape[-2:])

    def prediction(self, st_map: torch.Tensor, ae_map: torch.Tensor, image_size: tuple[int, int]) -> InferenceBatch:
        """The anomaly map and image score from ``raw_maps``' output (for callers that also use the raw maps)."""
        anomaly_map = self.anomaly_map_generator(st_map, ae_map, image_size)
        return InferenceBatch(pred_score=torch.amax(anomaly_map, dim=(-2, -1)),
                              anomaly_map=self.anomaly_map_generator.smooth(anomaly_map))
