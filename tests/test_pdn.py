"""Tests for efficientad_plugin.pdn: layouts, parameter counts, output sizes and state-dict loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efficientad_plugin.pdn import (
    MODEL_SIZES,
    PatchDescriptionNetwork,
    batched_pass_is_faster,
    check_model_size,
    load_pdn_state_dict,
    pdn_output_size,
)

SIZES_TO_CHECK = [(256, 256), (300, 301), (256, 512), (333, 257), (33, 33), (40, 47)]


def _num_params(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("model_size", "out_channels", "expected"),
    [
        ("small", 384, 2_694_144),  # teacher PDN-S, paper Table 16
        ("small", 768, 4_267_392),  # student PDN-S
        ("medium", 384, 8_026_624),  # teacher PDN-M
        ("medium", 768, 11_615_488),  # student PDN-M
    ],
)
def test_parameter_counts_match_paper(model_size: str, out_channels: int, expected: int) -> None:
    assert _num_params(PatchDescriptionNetwork(model_size, out_channels)) == expected


@pytest.mark.parametrize(
    ("model_size", "expected_types"),
    [
        ("small", ["conv", "relu", "pool", "conv", "relu", "pool", "conv", "relu", "conv"]),
        (
            "medium",
            ["conv", "relu", "pool", "conv", "relu", "pool", "conv", "relu", "conv", "relu", "conv", "relu", "conv"],
        ),
    ],
)
def test_layer_order_has_relu_after_every_conv_but_the_last(model_size: str, expected_types: list[str]) -> None:
    kinds = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.AvgPool2d: "pool"}
    pdn = PatchDescriptionNetwork(model_size)
    assert [kinds[type(module)] for module in pdn] == expected_types
    names = [name for name, _ in pdn.named_children()]
    num_convs = expected_types.count("conv")
    assert [name for name in names if name.startswith("conv")] == [f"conv{i}" for i in range(1, num_convs + 1)]
    assert names[-1] == f"conv{num_convs}"


def test_output_can_be_negative_but_hidden_activations_cannot() -> None:
    pdn = PatchDescriptionNetwork("small").eval()
    hidden: list[torch.Tensor] = []
    pdn.relu3.register_forward_hook(lambda _m, _i, output: hidden.append(output.clone()))
    with torch.no_grad():
        output = pdn(torch.randn(1, 3, 48, 48))
    assert (output < 0).any()  # no ReLU after the last conv
    assert (hidden[0] >= 0).all()
    assert (hidden[0] > 0).any()


@pytest.mark.parametrize("batched", [True, False])
def test_partial_outputs_are_slices_of_the_full_outputs(batched: bool) -> None:
    """Batched or not, each batch gets exactly its channels of the full output, in the order given."""
    torch.manual_seed(0)
    pdn = PatchDescriptionNetwork("small", out_channels=8).eval()
    inputs = [torch.randn(1, 3, 40, 40), torch.randn(2, 3, 40, 40)]
    channels = [slice(0, 4), slice(4, 8)]
    with torch.no_grad():
        outputs = pdn.partial_outputs(inputs, channels, batched=batched)
        expected = [pdn(batch)[:, selected] for batch, selected in zip(inputs, channels, strict=True)]
    for output, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)


def test_partial_outputs_on_cpu_take_the_measured_faster_pass_and_batch_only_equal_sizes() -> None:
    pdn = PatchDescriptionNetwork("small", out_channels=8)
    concatenated: list[int] = []
    pdn.conv1.register_forward_hook(lambda _m, inputs, _o: concatenated.append(len(inputs[0])))
    same = [torch.randn(1, 3, 40, 40)] * 2
    with torch.no_grad():
        pdn.partial_outputs(same, [slice(0, 4)] * 2)
        assert concatenated == [1, 1]  # CPU, nothing measured: one pass per batch
        concatenated.clear()
        pdn.partial_outputs(same, [slice(0, 4)] * 2, measure=True)
        faster = batched_pass_is_faster(pdn, same, [slice(0, 4)] * 2)  # cached: the choice just made
        assert concatenated == ([2] if faster else [1, 1])
        concatenated.clear()
        pdn.partial_outputs([torch.randn(1, 3, 40, 40), torch.randn(1, 3, 48, 48)], [slice(0, 4)] * 2, batched=True)
        assert concatenated == [1, 1]  # sizes differ: one pass per batch, whatever was asked
    assert all(parameter.grad is None for parameter in pdn.parameters())  # the timing ran on another network
    with torch.device("meta"):
        meta = PatchDescriptionNetwork("small", out_channels=8)
        calls: list[int] = []
        meta.conv1.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
        meta.partial_outputs([torch.empty(1, 3, 40, 40)] * 3, [slice(0, 4)] * 3)
    assert calls == [3]  # off the CPU: one pass for batches of one size, nothing timed


@pytest.mark.parametrize(("batched_seconds", "expected"), [(1.0, True), (3.0, False)])
def test_batched_pass_is_faster_picks_the_faster_timing_once_per_shape(batched_seconds: float, expected: bool) -> None:
    """A clock on which the batched pass takes ``batched_seconds`` and one pass per batch 2 s decides the choice."""
    pdn = PatchDescriptionNetwork("small", out_channels=8)
    clock, ticks = [0.0], []

    def timer() -> float:  # two calls per timed pass (start, end); the passes alternate, batched first
        ticks.append(clock[0])
        if len(ticks) % 2 == 0:
            clock[0] += batched_seconds if (len(ticks) // 2) % 2 == 1 else 2.0
        return clock[0]

    inputs = [torch.randn(1, 3, 40 + int(batched_seconds), 40)] * 3  # a shape of its own: not cached yet
    assert batched_pass_is_faster(pdn, inputs, [slice(0, 4)] * 3, timer=timer) is expected
    timed = len(ticks)
    assert batched_pass_is_faster(pdn, inputs, [slice(0, 4)] * 3, timer=timer) is expected
    assert len(ticks) == timed  # measured once per shape and precision


def test_unpadded_output_is_56_for_256() -> None:
    with torch.device("meta"):
        for model_size in MODEL_SIZES:
            output = PatchDescriptionNetwork(model_size)(torch.empty(1, 3, 256, 256))
            assert tuple(output.shape) == (1, 384, 56, 56)


def test_padded_output_is_64_for_256() -> None:
    with torch.device("meta"):
        for model_size in MODEL_SIZES:
            for out_channels in (384, 768):
                pdn = PatchDescriptionNetwork(model_size, out_channels, padding=True)
                assert tuple(pdn(torch.empty(2, 3, 256, 256)).shape) == (2, out_channels, 64, 64)


@pytest.mark.parametrize("model_size", MODEL_SIZES)
@pytest.mark.parametrize("image_size", SIZES_TO_CHECK)
def test_pdn_output_size_matches_the_network(model_size: str, image_size: tuple[int, int]) -> None:
    # Shape propagation on the meta device runs the real modules without computing values.
    with torch.device("meta"):
        output = PatchDescriptionNetwork(model_size)(torch.empty(1, 3, *image_size))
    assert tuple(output.shape[-2:]) == pdn_output_size(image_size)


def test_pdn_output_size_matches_a_real_forward() -> None:
    pdn = PatchDescriptionNetwork("small").eval()
    with torch.no_grad():
        output = pdn(torch.rand(1, 3, 41, 50))
    assert tuple(output.shape) == (1, 384, *pdn_output_size((41, 50)))
    assert pdn_output_size((33, 33)) == (1, 1)  # the receptive field is 33x33


def test_check_model_size() -> None:
    assert check_model_size("small") == "small"
    assert check_model_size("medium") == "medium"
    for bad in ("S", "large", "Small", ""):
        with pytest.raises(ValueError, match="model_size") as error:
            check_model_size(bad)
        assert "small" in str(error.value)
        assert "medium" in str(error.value)
        assert repr(bad) in str(error.value)
    with pytest.raises(ValueError, match="small"):
        PatchDescriptionNetwork("large")


def _nelson_sequential(model_size: str, out_channels: int = 384) -> nn.Sequential:
    """nelson1425's teacher layout: an ``nn.Sequential`` with ReLUs and pools as separate indices."""
    if model_size == "small":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4),  # 0
            nn.ReLU(),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4),  # 3
            nn.ReLU(),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3),  # 6
            nn.ReLU(),
            nn.Conv2d(256, out_channels, 4),  # 8
        )
    return nn.Sequential(
        nn.Conv2d(3, 256, 4),  # 0
        nn.ReLU(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(256, 512, 4),  # 3
        nn.ReLU(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(512, 512, 1),  # 6
        nn.ReLU(),
        nn.Conv2d(512, 512, 3),  # 8
        nn.ReLU(),
        nn.Conv2d(512, out_channels, 4),  # 10
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1),  # 12
    )


def _save_and_reload(state_dict: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    torch.save(state_dict, path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("model_size", "conv_indices"),
    [("small", [0, 3, 6, 8]), ("medium", [0, 3, 6, 8, 10, 12])],
)
def test_loads_nelson_sequential_layout(tmp_path, model_size: str, conv_indices: list[int]) -> None:
    reference = _nelson_sequential(model_size).eval()
    path = tmp_path / f"teacher_{model_size}.pth"
    state_dict = _save_and_reload(reference.state_dict(), path)
    assert sorted({int(key.split(".")[0]) for key in state_dict}) == conv_indices
    pdn = PatchDescriptionNetwork(model_size).eval()
    load_pdn_state_dict(pdn, state_dict, str(path))
    image = torch.randn(1, 3, 45, 52)
    with torch.no_grad():
        expected = reference(image)
        actual = pdn(image)
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("model_size", MODEL_SIZES)
def test_loads_anomalib_names(tmp_path, model_size: str, prefix: str) -> None:
    source = PatchDescriptionNetwork(model_size).eval()
    names = list(source.state_dict())
    assert names[0] == "conv1.weight"
    prefixed = {prefix + key: value for key, value in source.state_dict().items()}
    state_dict = _save_and_reload(prefixed, tmp_path / "t.pth")
    target = PatchDescriptionNetwork(model_size).eval()
    assert not torch.equal(target.conv1.weight, source.conv1.weight)
    load_pdn_state_dict(target, state_dict, "t.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    image = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(target(image), source(image))


def test_loads_module_prefixed_sequential_layout(tmp_path) -> None:
    reference = _nelson_sequential("small").eval()
    state_dict = _save_and_reload({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "t.pth")
    pdn = PatchDescriptionNetwork("small").eval()
    load_pdn_state_dict(pdn, state_dict, "t.pth")
    image = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(pdn(image), reference(image))


def test_rejects_medium_weights_in_small_pdn(tmp_path) -> None:
    path = tmp_path / "teacher_medium.pth"
    state_dict = _save_and_reload(PatchDescriptionNetwork("medium").state_dict(), path)
    pdn = PatchDescriptionNetwork("small")
    before = {key: value.clone() for key, value in pdn.state_dict().items()}
    with pytest.raises(ValueError, match="mismatched") as error:
        load_pdn_state_dict(pdn, state_dict, str(path))
    message = str(error.value)
    assert str(path) in message
    assert "PDN-S" in message
    assert "conv5.weight" in message  # a key the small PDN does not have
    assert "conv1.weight: file (256, 3, 4, 4) vs model (128, 3, 4, 4)" in message
    for key, value in pdn.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_rejects_student_weights_in_teacher(tmp_path) -> None:
    state_dict = PatchDescriptionNetwork("small", 768).state_dict()
    with pytest.raises(ValueError, match=r"conv4\.weight: file \(768, 256, 4, 4\) vs model \(384, 256, 4, 4\)"):
        load_pdn_state_dict(PatchDescriptionNetwork("small"), state_dict, "student.pth")
