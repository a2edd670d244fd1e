"""Tests for efficientad_plugin.torch_model: wiring of teacher, student, autoencoder, statistics and maps.

Full-size forwards are expensive on CPU, so each is done once in a module-scoped fixture and inspected through
forward hooks; shape-only checks run on the meta device. Images that only the teacher and student see may be
smaller than ``image_size`` (both are fully convolutional); the autoencoder's inputs are always full size.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from anomalib.data import InferenceBatch

from efficientad_plugin.loss import EfficientAdLoss
from efficientad_plugin.pdn import pdn_output_size
from efficientad_plugin.torch_model import IMAGENET_MEAN, IMAGENET_STD, EfficientAdPluginModel, TrainingFeatures

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


class Recorder:
    """Records the inputs and outputs of every call of the given modules."""

    def __init__(self, **modules: torch.nn.Module) -> None:
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(_module, args, output):
            self.inputs[name].append(args[0].detach().clone())
            self.outputs[name].append(output.detach().clone())

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _new_model(image_size=(256, 256)) -> EfficientAdPluginModel:
    torch.manual_seed(0)
    return EfficientAdPluginModel("small", image_size)


def _set_statistics(model: EfficientAdPluginModel) -> None:
    generator = torch.Generator().manual_seed(1)
    model.teacher_mean.copy_(0.1 * torch.randn(model.teacher_mean.shape, generator=generator))
    model.teacher_std.copy_(0.5 + torch.rand(model.teacher_std.shape, generator=generator))
    # q_a = 0 so that the (positive) raw maps of the random networks give a positive anomaly map
    model.anomaly_map_generator.st_quantiles.copy_(torch.tensor([0.0, 0.5]))
    model.anomaly_map_generator.ae_quantiles.copy_(torch.tensor([0.0, 0.2]))


@pytest.fixture(scope="module")
def model() -> EfficientAdPluginModel:
    model = _new_model()
    _set_statistics(model)
    return model


@pytest.fixture(scope="module")
def eval_run(model: EfficientAdPluginModel):
    """One eval forward of two 256 x 256 images, with every network's input and output recorded."""
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    model.eval()
    recorder = Recorder(teacher=model.teacher, student=model.student, autoencoder=model.autoencoder)
    try:
        with torch.no_grad():
            result = model(images)
    finally:
        recorder.remove()
    return images, result, recorder


@pytest.fixture(scope="module")
def train_run(model: EfficientAdPluginModel):
    """One training_features call without a penalty set, with autograd on."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(1, 3, 64, 64, generator=generator)
    augmented = torch.rand(1, 3, 256, 256, generator=generator)
    model.train()
    try:
        features = model.training_features(images, augmented, None)
    finally:
        model.eval()
    return images, augmented, features


# --- construction and state -----------------------------------------------------------------------------------


def test_parameters_and_freezing(model: EfficientAdPluginModel) -> None:
    assert all(not parameter.requires_grad for parameter in model.teacher.parameters())
    assert all(parameter.requires_grad for parameter in model.student.parameters())
    assert all(parameter.requires_grad for parameter in model.autoencoder.parameters())
    assert sum(p.numel() for p in model.teacher.parameters()) == 2_694_144
    assert sum(p.numel() for p in model.student.parameters()) == 4_267_392
    assert sum(p.numel() for p in model.autoencoder.parameters()) == 1_096_320


def test_state_dict_holds_exported_buffers_only(model: EfficientAdPluginModel) -> None:
    state = model.state_dict()
    generator_buffers = ("anomaly_map_generator.st_quantiles", "anomaly_map_generator.ae_quantiles")
    for key in ("teacher_mean", "teacher_std", *generator_buffers):
        assert key in state, key
    assert "imagenet_mean" not in state and "imagenet_std" not in state
    buffers = dict(model.named_buffers())
    assert torch.allclose(buffers["imagenet_mean"], MEAN) and torch.allclose(buffers["imagenet_std"], STD)
    restored = _new_model()
    assert not restored.has_teacher_statistics and not restored.anomaly_map_generator.is_fitted
    restored.load_state_dict(state)  # strict: no missing or unexpected keys
    assert restored.has_teacher_statistics and restored.anomaly_map_generator.is_fitted
    assert torch.equal(restored.teacher_std, model.teacher_std)
    assert torch.equal(restored.anomaly_map_generator.ae_quantiles, model.anomaly_map_generator.ae_quantiles)
    assert torch.allclose(restored.imagenet_mean, MEAN)


def test_rejects_small_image_size() -> None:
    with pytest.raises(ValueError, match="256"):
        EfficientAdPluginModel("small", (224, 256))
    with pytest.raises(ValueError, match="model_size"):
        EfficientAdPluginModel("tiny", (256, 256))


# --- inference ------------------------------------------------------------------------------------------------


def test_eval_forward_shapes_and_score(eval_run) -> None:
    _, result, _ = eval_run
    assert isinstance(result, InferenceBatch)
    assert result.pred_score.shape == (2, 1)
    assert result.anomaly_map.shape == (2, 1, 256, 256)
    assert torch.isfinite(result.anomaly_map).all()
    assert torch.equal(result.pred_score, result.anomaly_map.amax(dim=(-2, -1)))
    assert (result.pred_score > 0).all()
    assert result.pred_score[0] != result.pred_score[1]  # per image, not over the batch
    assert (result.anomaly_map[..., :8, :] == 0).all()  # the zero padding of the map


def test_imagenet_normalisation_happens_once_for_all_networks(eval_run) -> None:
    images, _, recorder = eval_run
    for name in ("teacher", "student", "autoencoder"):
        assert len(recorder.inputs[name]) == 1, name
        assert torch.allclose(recorder.inputs[name][0], _normalise(images), atol=1e-6), name


def test_anomaly_map_is_built_from_the_network_outputs(model: EfficientAdPluginModel, eval_run) -> None:
    _, result, recorder = eval_run
    teacher = (recorder.outputs["teacher"][0] - model.teacher_mean) / model.teacher_std
    student = recorder.outputs["student"][0]
    autoencoder = recorder.outputs["autoencoder"][0]
    assert student.shape == (2, 768, 56, 56)
    st_map = (teacher - student[:, :384]).pow(2).mean(dim=1, keepdim=True)
    ae_map = (autoencoder - student[:, 384:]).pow(2).mean(dim=1, keepdim=True)
    expected = model.anomaly_map_generator(st_map, ae_map, (256, 256))
    assert torch.allclose(result.anomaly_map, expected, rtol=1e-5, atol=1e-6)


def test_rectangular_forward_shapes() -> None:
    with torch.device("meta"):
        model = EfficientAdPluginModel("small", (256, 320)).eval()
        result = model(torch.empty(2, 3, 256, 320))
        st_map, ae_map = model.raw_maps(torch.empty(2, 3, 256, 320))
    assert result.pred_score.shape == (2, 1)
    assert result.anomaly_map.shape == (2, 1, 256, 320)
    assert st_map.shape == ae_map.shape == (2, 1, *pdn_output_size((256, 320)))


# --- teacher statistics ---------------------------------------------------------------------------------------


def test_fit_teacher_statistics_equals_direct_mean_and_std() -> None:
    model = _new_model()
    generator = torch.Generator().manual_seed(4)
    batches = [torch.rand(size, 3, 64, 64, generator=generator) for size in (2, 1, 3)]

    def stream() -> Iterator[torch.Tensor]:  # a one-pass iterable, like a data loader
        yield from batches

    assert not model.has_teacher_statistics
    recorder = Recorder(teacher=model.teacher)
    try:
        model.fit_teacher_statistics(stream())
    finally:
        recorder.remove()
    assert model.has_teacher_statistics
    # the teacher saw ImageNet-normalised images, once each
    assert len(recorder.inputs["teacher"]) == 3
    for seen, batch in zip(recorder.inputs["teacher"], batches, strict=True):
        assert torch.allclose(seen, _normalise(batch), atol=1e-6)
    outputs = torch.cat(recorder.outputs["teacher"])  # [6, 384, 8, 8]
    with torch.no_grad():
        assert torch.allclose(outputs, model.teacher(_normalise(torch.cat(batches))), atol=1e-5)
    expected_mean = outputs.double().mean(dim=(0, 2, 3))
    expected_std = outputs.double().std(dim=(0, 2, 3), unbiased=False)  # population std
    assert model.teacher_mean.shape == model.teacher_std.shape == (1, 384, 1, 1)
    assert torch.allclose(model.teacher_mean.flatten().double(), expected_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(model.teacher_std.flatten().double(), expected_std, rtol=1e-4, atol=1e-6)
    assert (model.teacher_std > 0).all()


def test_fit_teacher_statistics_rejects_empty_input() -> None:
    with torch.device("meta"):
        model = EfficientAdPluginModel("small", (256, 256))
    with pytest.raises(ValueError, match="empty"):
        model.fit_teacher_statistics([])


# --- training features ----------------------------------------------------------------------------------------


def test_training_features_shapes(train_run) -> None:
    images, augmented, features = train_run
    small, full = pdn_output_size(images.shape[-2:]), pdn_output_size(augmented.shape[-2:])
    assert isinstance(features, TrainingFeatures)
    assert features.student_penalty is None
    assert features.teacher.shape == features.student.shape == (1, 384, *small)
    for name in ("teacher_augmented", "autoencoder_augmented", "student_augmented"):
        assert getattr(features, name).shape == (1, 384, *full), name


def test_training_teacher_features_are_normalised_and_detached(model: EfficientAdPluginModel, train_run) -> None:
    images, _, features = train_run
    for tensor in (features.teacher, features.teacher_augmented):
        assert not tensor.requires_grad and tensor.grad_fn is None
    with torch.no_grad():
        expected = (model.teacher(_normalise(images)) - model.teacher_mean) / model.teacher_std
        student = model.student(_normalise(images))
    assert torch.allclose(features.teacher, expected, atol=1e-5)
    # the student's first 384 channels mimic the teacher, the last 384 the autoencoder
    assert torch.allclose(features.student, student[:, :384], atol=1e-5)
    assert features.student.requires_grad and features.student_augmented.requires_grad
    assert features.autoencoder_augmented.requires_grad


def test_losses_route_gradients_to_student_and_autoencoder_only(model: EfficientAdPluginModel, train_run) -> None:
    _, _, features = train_run
    losses = EfficientAdLoss()(features)
    assert "loss_penalty" not in losses
    student_last, ae_last = model.student.conv4.weight, model.autoencoder.head[-1].weight
    teacher_parameters = list(model.teacher.parameters())

    def grads(name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # only the last layers: cheap, and enough to see which network a loss term reaches
        return torch.autograd.grad(losses[name], (student_last, ae_last), retain_graph=True, allow_unused=True)

    student_grad, ae_grad = grads("loss_hard")
    assert student_grad is not None and student_grad.abs().sum() > 0 and ae_grad is None
    student_grad, ae_grad = grads("loss_ae")
    assert student_grad is None and ae_grad is not None and ae_grad.abs().sum() > 0
    student_grad, ae_grad = grads("loss_stae")
    assert student_grad.abs().sum() > 0 and ae_grad.abs().sum() > 0
    student_grad, ae_grad = grads("loss")
    assert student_grad.abs().sum() > 0 and ae_grad.abs().sum() > 0
    with pytest.raises(RuntimeError):  # the teacher is not part of the graph at all
        torch.autograd.grad(losses["loss"], teacher_parameters[-1], retain_graph=True, allow_unused=True)
    assert all(parameter.grad is None for parameter in teacher_parameters)


def test_training_features_with_penalty(model: EfficientAdPluginModel) -> None:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(1, 3, 48, 48, generator=generator)
    augmented = torch.rand(1, 3, 256, 256, generator=generator)
    penalty = torch.rand(1, 3, 40, 56, generator=generator)
    features = model.training_features(images, augmented, penalty)
    assert features.student_penalty.shape == (1, 384, *pdn_output_size((40, 56)))
    with torch.no_grad():
        expected = model.student(_normalise(penalty))[:, :384]
    torch.testing.assert_close(features.student_penalty.detach(), expected, atol=1e-5, rtol=1e-5)
    losses = EfficientAdLoss()(features)
    assert torch.allclose(losses["loss_penalty"], features.student_penalty.pow(2).mean())
    student_grad, ae_grad = torch.autograd.grad(
        losses["loss_penalty"], (model.student.conv4.weight, model.autoencoder.head[-1].weight), allow_unused=True
    )
    assert student_grad is not None and student_grad.abs().sum() > 0 and ae_grad is None


def test_training_features_without_the_global_branch(model: EfficientAdPluginModel) -> None:
    """Without an augmented image (autoencoder_start) the local branch's outputs are the same and nothing else runs."""
    generator = torch.Generator().manual_seed(7)
    images, augmented, penalty = (torch.rand(1, 3, 256, 256, generator=generator) for _ in range(3))
    full = model.training_features(images, augmented, penalty)
    local = model.training_features(images, None, penalty)
    assert local.teacher_augmented is None and local.autoencoder_augmented is None
    assert local.student_augmented is None
    torch.testing.assert_close(local.student, full.student, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local.student_penalty, full.student_penalty, atol=1e-5, rtol=1e-5)
    losses = EfficientAdLoss()(local)
    assert set(losses) == {"loss_hard", "loss_penalty", "loss"}
    ae_grad = torch.autograd.grad(losses["loss"], model.autoencoder.head[-1].weight, allow_unused=True)[0]
    assert ae_grad is None


def test_half_width_student_passes_match_full_passes(model: EfficientAdPluginModel) -> None:
    """The half-width student passes give the losses and gradients of three full passes (float tolerance)."""
    generator = torch.Generator().manual_seed(6)
    images, augmented, penalty = (torch.rand(1, 3, 256, 256, generator=generator) for _ in range(3))
    loss = EfficientAdLoss()
    features = model.training_features(images, augmented, penalty)
    losses = loss(features)
    gradients = torch.autograd.grad(losses["loss"], list(model.student.parameters()))
    reference_features = features._replace(
        student=model.student(_normalise(images))[:, :384],
        student_penalty=model.student(_normalise(penalty))[:, :384],
        student_augmented=model.student(_normalise(augmented))[:, 384:],
    )
    reference = loss(reference_features)
    reference_gradients = torch.autograd.grad(reference["loss"], list(model.student.parameters()))
    for name in reference:
        torch.testing.assert_close(losses[name], reference[name], atol=1e-6, rtol=1e-5)
    for gradient, expected in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, atol=1e-6, rtol=1e-4)


def test_a_known_teacher_output_replaces_the_teacher_pass_on_the_training_images(
    model: EfficientAdPluginModel, train_run
) -> None:
    """What the teacher cache relies on: the same losses, one teacher pass fewer (the augmented image's remains)."""
    images, augmented, _ = train_run
    teacher = model.teacher_features(images)
    assert teacher.dtype == torch.float32 and not teacher.requires_grad
    model.train()  # the autoencoder's dropout draws from the global generator: the cache must not shift it
    recorder = Recorder(teacher=model.teacher)
    try:
        torch.manual_seed(8)
        features = model.training_features(images, augmented, None)
        torch.manual_seed(8)
        cached = model.training_features(images, augmented, None, teacher)
    finally:
        recorder.remove()
        model.eval()
    assert torch.equal(features.teacher, teacher) and cached.teacher is teacher
    shapes = [tuple(seen.shape) for seen in recorder.inputs["teacher"]]
    assert shapes == [tuple(images.shape), tuple(augmented.shape), tuple(augmented.shape)]
    losses, expected = EfficientAdLoss()(cached), EfficientAdLoss()(features)
    for name in expected:
        assert torch.equal(losses[name], expected[name]), name


def test_teacher_statistics_stay_fp32_under_mixed_precision() -> None:
    batches = [torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(7))]
    reference, mixed = _new_model(), _new_model()
    reference.fit_teacher_statistics(batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed.fit_teacher_statistics(batches)
    assert mixed.teacher_mean.dtype == mixed.teacher_std.dtype == torch.float32
    assert torch.equal(mixed.teacher_mean, reference.teacher_mean)
    assert torch.equal(mixed.teacher_std, reference.teacher_std)


def test_native_mode_scores_the_image_at_its_size_and_the_global_branch_at_image_size() -> None:
    torch.manual_seed(0)
    native = EfficientAdPluginModel("small", (256, 256), native=True).eval()
    for mean, std in ((native.teacher_mean, native.teacher_std),
                      (native.global_teacher_mean, native.global_teacher_std)):
        mean.zero_()
        std.fill_(1.0)
    image = torch.rand(1, 3, 330, 290)
    with torch.no_grad():
        st_map, ae_map, learnt = native.maps_and_learning(image)
        assert tuple(st_map.shape[-2:]) == pdn_output_size((330, 290))  # the image as it is
        assert tuple(ae_map.shape[-2:]) == pdn_output_size((256, 256))  # the 256-px view
        view = native.resized(image)
        expected_ae = (native.autoencoder(native._imagenet_normalise(view))
                       - native.student(native._imagenet_normalise(view))[:, 384:]).pow(2).mean(1, keepdim=True)
        assert torch.allclose(ae_map, expected_ae, atol=1e-6)
        assert learnt.shape == (1, 2)
        native.anomaly_map_generator.fit(st_map.flatten(), ae_map.flatten())
        assert native(image).anomaly_map.shape == (1, 1, 330, 290)
        # on images of image_size the native model is the default one
        default = EfficientAdPluginModel("small", (256, 256)).eval()
        default.load_state_dict({name: value for name, value in native.state_dict().items()
                                 if not name.startswith("global_teacher_")})
        images = torch.rand(2, 3, 256, 256)
        assert torch.allclose(native(images).anomaly_map, default(images).anomaly_map, atol=1e-6)


def test_native_mode_standardises_the_global_view_with_its_own_teacher_statistics() -> None:
    torch.manual_seed(0)
    native = EfficientAdPluginModel("small", (256, 256), native=True)
    batches = [torch.rand(1, 3, 400, 300), torch.rand(1, 3, 320, 352)]
    assert not native.has_teacher_statistics
    native.fit_teacher_statistics(iter(batches))  # one pass over a one-pass iterable
    assert native.has_teacher_statistics
    with torch.no_grad():
        full = [native.teacher(_normalise(batch)) for batch in batches]
        views = torch.cat([native.teacher(_normalise(native.resized(batch))) for batch in batches])
    full_values = torch.cat([output.flatten(2) for output in full], dim=2)  # sizes differ: pixels side by side
    torch.testing.assert_close(native.teacher_mean.flatten(), full_values.mean(dim=(0, 2)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(native.global_teacher_mean.flatten(), views.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(native.global_teacher_std.flatten(), views.std(dim=(0, 2, 3), unbiased=False),
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(native.global_teacher_mean, native.teacher_mean, atol=1e-3)
    # the autoencoder's targets in training are standardised with the global view's statistics
    view = native.resized(batches[0])
    features = native.training_features(batches[0][..., :256, :256], view, None)
    with torch.no_grad():
        expected = (native.teacher(_normalise(view)) - native.global_teacher_mean) / native.global_teacher_std
    torch.testing.assert_close(features.teacher_augmented, expected, atol=1e-5, rtol=1e-5)
    # a default model has no such statistics: its state dict is unchanged
    assert "global_teacher_mean" not in EfficientAdPluginModel("small", (256, 256)).state_dict()
