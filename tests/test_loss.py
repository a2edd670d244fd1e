"""Tests for efficientad_plugin.loss: the hard feature loss and the four-term EfficientAD loss."""

from __future__ import annotations

import pytest
import torch

from efficientad_plugin.loss import HARD_QUANTILE, EfficientAdLoss, hard_feature_loss
from efficientad_plugin.torch_model import TrainingFeatures


def _reference_hard_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """The paper's and anomalib's formulation: mean of the distances at or above their quantile."""
    distance = (teacher - student) ** 2
    threshold = torch.quantile(distance.flatten(), quantile)
    return distance[distance >= threshold].mean()


def _order_statistic_reference_hard_loss(distance: torch.Tensor, quantile: float) -> torch.Tensor:
    """The same definition for any size: the linear-interpolation quantile from two order statistics (kthvalue),
    interpolated in float64, then the mean of the values at or above it."""
    flat = distance.flatten()
    position = quantile * (flat.numel() - 1)
    lower = int(position)
    upper = min(lower + 1, flat.numel() - 1)
    below = flat.kthvalue(lower + 1).values.double()
    above = flat.kthvalue(upper + 1).values.double()
    threshold = below + (above - below) * (position - lower)
    candidates = flat[flat >= below].double()  # exact float32 comparison, then the float64 threshold
    return candidates[candidates >= threshold].mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hard_feature_loss_matches_quantile_reference(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(1, 384, 56, 56, generator=generator)
    student = torch.randn(1, 384, 56, 56, generator=generator)
    actual = hard_feature_loss(teacher, student)
    expected = _reference_hard_loss(teacher, student)
    assert actual.shape == ()
    assert torch.allclose(actual, expected, rtol=1e-6, atol=0)
    reference = _order_statistic_reference_hard_loss((teacher - student) ** 2, HARD_QUANTILE)
    assert torch.allclose(reference.float(), expected, rtol=1e-6, atol=0)
    # the hard loss is far above the plain mean: it really selects the largest 0.1 %
    assert actual > 5 * ((teacher - student) ** 2).mean()


@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.99])
def test_hard_feature_loss_other_quantiles(quantile: float) -> None:
    generator = torch.Generator().manual_seed(7)
    teacher = torch.rand(2, 8, 13, 11, generator=generator)
    student = torch.rand(2, 8, 13, 11, generator=generator)
    expected = _reference_hard_loss(teacher, student, quantile)
    assert torch.allclose(hard_feature_loss(teacher, student, quantile), expected, rtol=1e-6, atol=0)


def test_hard_feature_loss_small_known_values() -> None:
    student = torch.zeros(1, 1, 2, 2)
    teacher = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)  # distances 1, 4, 9, 16
    assert hard_feature_loss(teacher, student) == 16.0  # only the maximum is >= the 0.999 quantile
    # quantile 0.5 of (1, 4, 9, 16) is 6.5: the mean of 9 and 16
    assert hard_feature_loss(teacher, student, 0.5) == 12.5
    assert hard_feature_loss(teacher, student, 0.0) == 7.5  # everything


def test_hard_feature_loss_is_deterministic() -> None:
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(1, 384, 56, 56, generator=generator)
    student = torch.randn(1, 384, 56, 56, generator=generator)
    assert torch.equal(hard_feature_loss(teacher, student), hard_feature_loss(teacher, student))


def test_hard_feature_loss_with_ties_at_the_quantile() -> None:
    # 500 distances of 10 above a tie group of 2000 distances of 5 (e.g. a uniform background region),
    # the rest below 1. The 0.999 quantile is 5, so the reference averages all 2500 values >= 5: 6.0.
    generator = torch.Generator().manual_seed(0)
    distance = torch.rand(1, 384, 56, 56, generator=generator).flatten()
    distance[:500] = 10.0
    distance[500:2500] = 5.0
    distance = distance.view(1, 384, 56, 56)
    teacher, student = distance.sqrt(), torch.zeros_like(distance)
    expected = _reference_hard_loss(teacher, student)
    assert torch.allclose(expected, torch.tensor(6.0))
    assert torch.allclose(hard_feature_loss(teacher, student), expected, rtol=1e-6, atol=0)


def test_hard_feature_loss_beyond_torch_quantile_limit() -> None:
    # Older torch.quantile refused inputs above 2**24 elements (torch 2.14 no longer does); the hard loss must be
    # exact there too, so it is compared with an order-statistic reference.
    numel = 2**24 + 37
    generator = torch.Generator().manual_seed(5)
    teacher = torch.rand(numel, generator=generator)
    student = torch.zeros(numel)
    expected = _order_statistic_reference_hard_loss((teacher - student) ** 2, HARD_QUANTILE)
    actual = hard_feature_loss(teacher, student)
    assert torch.allclose(actual.double(), expected, rtol=1e-6, atol=0)
    # about 0.1 % of uniform values squared lie above 0.999**2: their mean is close to 1
    assert 0.998 < float(actual) <= 1.0


def _features(penalty: bool = True) -> TrainingFeatures:
    def tensor(*values: float) -> torch.Tensor:
        return torch.tensor(values).view(1, 1, 2, 2)

    return TrainingFeatures(
        teacher=torch.zeros(1, 1, 2, 2),
        student=tensor(1.0, 2.0, 3.0, 4.0),  # hard loss: max of 1, 4, 9, 16 = 16
        student_penalty=torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) if penalty else None,  # (1 + 9) / 2 = 5
        teacher_augmented=torch.zeros(1, 1, 2, 2),
        autoencoder_augmented=tensor(2.0, 2.0, 2.0, 2.0),  # (0 - 2)^2 = 4
        student_augmented=tensor(1.0, 1.0, 1.0, 4.0),  # (1 + 1 + 1 + 4) / 4 = 1.75
    )


def test_efficientad_loss_known_values() -> None:
    losses = EfficientAdLoss()(_features())
    assert list(losses) == ["loss_hard", "loss_penalty", "loss_ae", "loss_stae", "loss"]
    assert losses["loss_hard"].item() == 16.0
    assert losses["loss_penalty"].item() == 5.0
    assert losses["loss_ae"].item() == 4.0
    assert losses["loss_stae"].item() == 1.75
    assert losses["loss"].item() == 16.0 + 5.0 + 4.0 + 1.75


def test_efficientad_loss_without_penalty() -> None:
    losses = EfficientAdLoss()(_features(penalty=False))
    assert "loss_penalty" not in losses
    assert set(losses) == {"loss_hard", "loss_ae", "loss_stae", "loss"}
    assert losses["loss"].item() == 16.0 + 4.0 + 1.75


def test_efficientad_loss_hard_quantile_is_used() -> None:
    losses = EfficientAdLoss(hard_quantile=0.5)(_features())
    assert losses["loss_hard"].item() == 12.5  # mean of 9 and 16


def test_efficientad_loss_sum_on_random_features() -> None:
    generator = torch.Generator().manual_seed(11)
    shape = (2, 384, 8, 8)
    features = TrainingFeatures(*(torch.randn(*shape, generator=generator) for _ in range(6)))
    losses = EfficientAdLoss()(features)
    assert torch.allclose(
        losses["loss"], losses["loss_hard"] + losses["loss_penalty"] + losses["loss_ae"] + losses["loss_stae"]
    )
    expected_ae = (features.teacher_augmented - features.autoencoder_augmented).pow(2).mean()
    assert torch.allclose(losses["loss_ae"], expected_ae)
    assert torch.allclose(losses["loss_penalty"], features.student_penalty.pow(2).mean())


def test_gradients_of_the_stae_loss_reach_autoencoder_and_student() -> None:
    generator = torch.Generator().manual_seed(1)
    shape = (1, 4, 3, 3)
    autoencoder = torch.randn(*shape, generator=generator, requires_grad=True)
    student_augmented = torch.randn(*shape, generator=generator, requires_grad=True)
    student = torch.randn(*shape, generator=generator, requires_grad=True)
    teacher = torch.randn(*shape, generator=generator)
    teacher_augmented = torch.randn(*shape, generator=generator)
    features = TrainingFeatures(teacher, student, None, teacher_augmented, autoencoder, student_augmented)
    losses = EfficientAdLoss()(features)
    losses["loss_stae"].backward()
    expected = 2 * (autoencoder - student_augmented).detach() / autoencoder.numel()
    assert torch.allclose(autoencoder.grad, expected)
    assert torch.allclose(student_augmented.grad, -expected)
    assert student.grad is None  # the STAE term does not involve the student's teacher-mimicking channels
    assert autoencoder.grad.abs().sum() > 0


def test_total_loss_gradients_reach_every_trainable_output() -> None:
    generator = torch.Generator().manual_seed(2)
    shape = (1, 4, 5, 5)
    tensors = [torch.randn(*shape, generator=generator, requires_grad=True) for _ in range(6)]
    losses = EfficientAdLoss()(TrainingFeatures(*tensors))
    losses["loss"].backward()
    for name, tensor in zip(TrainingFeatures._fields, tensors, strict=True):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name
    # the hard loss only reaches the selected (largest) distances
    student_grad = tensors[1].grad
    assert (student_grad != 0).sum() == 100 - int(torch.ceil(torch.tensor(99 * HARD_QUANTILE)))
