"""Tests for efficientad_plugin.anomaly_map: exact quantiles, fitting and the quantile-normalised map."""

from __future__ import annotations

import pytest
import torch

from efficientad_plugin.anomaly_map import (
    MAP_PADDING,
    QUANTILE_END,
    QUANTILE_START,
    AnomalyMapGenerator,
    channel_mean_squared_error,
    exact_quantiles,
)


@pytest.fixture
def generator() -> AnomalyMapGenerator:
    return AnomalyMapGenerator()


def _fitted(st: tuple[float, float], ae: tuple[float, float]) -> AnomalyMapGenerator:
    module = AnomalyMapGenerator()
    module.st_quantiles.copy_(torch.tensor(st))
    module.ae_quantiles.copy_(torch.tensor(ae))
    return module


def test_paper_constants() -> None:
    assert (QUANTILE_START, QUANTILE_END, MAP_PADDING) == (0.9, 0.995, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_quantiles_equal_torch_quantile(seed: int) -> None:
    values = torch.randn(3, 1, 37, 41, generator=torch.Generator().manual_seed(seed))
    actual = exact_quantiles(values, (0.9, 0.995))
    expected = torch.quantile(values.flatten().double(), torch.tensor([0.9, 0.995], dtype=torch.float64))
    assert actual.dtype == torch.float32
    assert actual.shape == (2,)
    assert torch.allclose(actual, expected.float(), rtol=1e-6, atol=0)


def test_exact_quantiles_small_known_values() -> None:
    values = torch.tensor([4.0, 0.0, 3.0, 1.0, 2.0])
    assert exact_quantiles(values, (0.0, 0.5, 1.0, 0.9)).tolist() == pytest.approx([0.0, 2.0, 4.0, 3.6])


def test_channel_mean_squared_error() -> None:
    first = torch.zeros(2, 3, 4, 5)
    second = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    result = channel_mean_squared_error(first, second)
    assert result.shape == (2, 1, 4, 5)
    assert torch.allclose(result, torch.full((2, 1, 4, 5), 5.0 / 3.0))


def test_starts_unfitted(generator: AnomalyMapGenerator) -> None:
    assert not generator.is_fitted
    assert torch.isnan(generator.st_quantiles).all()
    assert torch.isnan(generator.ae_quantiles).all()
    assert generator.st_quantiles.shape == generator.ae_quantiles.shape == (2,)


def test_half_fitted_is_not_fitted(generator: AnomalyMapGenerator) -> None:
    generator.st_quantiles.copy_(torch.tensor([0.0, 1.0]))
    assert not generator.is_fitted
    generator.ae_quantiles.copy_(torch.tensor([0.0, 1.0]))
    assert generator.is_fitted


def test_fit_sets_each_branch_quantiles(generator: AnomalyMapGenerator) -> None:
    rng = torch.Generator().manual_seed(4)
    st_maps = torch.rand(4, 1, 56, 56, generator=rng)
    ae_maps = 10 + 3 * torch.rand(4, 1, 56, 56, generator=rng)
    generator.fit(st_maps, ae_maps)
    assert generator.is_fitted
    q = torch.tensor([0.9, 0.995], dtype=torch.float64)
    assert torch.allclose(generator.st_quantiles, torch.quantile(st_maps.double().flatten(), q).float(), rtol=1e-6)
    assert torch.allclose(generator.ae_quantiles, torch.quantile(ae_maps.double().flatten(), q).float(), rtol=1e-6)
    assert generator.ae_quantiles[0] > 10  # not mixed up with the student-teacher branch


@pytest.mark.parametrize("constant_branch", ["st", "ae"])
def test_fit_rejects_constant_maps(generator: AnomalyMapGenerator, constant_branch: str) -> None:
    varying = torch.rand(2, 1, 8, 8)
    constant = torch.full((2, 1, 8, 8), 0.25)
    st, ae = (constant, varying) if constant_branch == "st" else (varying, constant)
    with pytest.raises(ValueError, match="q_a = q_b"):
        generator.fit(st, ae)
    if constant_branch == "st":
        assert not generator.is_fitted


def test_forward_maps_q_a_to_zero_and_q_b_to_point_one() -> None:
    module = _fitted(st=(1.0, 3.0), ae=(10.0, 30.0))
    shape = (2, 1, 56, 56)

    def combined(st_value: float, ae_value: float) -> torch.Tensor:
        result = module(torch.full(shape, st_value), torch.full(shape, ae_value), (256, 256))
        assert result.shape == (2, 1, 256, 256)
        return result[..., 128, 128]  # the centre, far from the padding

    assert torch.allclose(combined(1.0, 10.0), torch.zeros(2, 1))
    assert torch.allclose(combined(3.0, 30.0), torch.full((2, 1), 0.1))
    assert torch.allclose(combined(3.0, 10.0), torch.full((2, 1), 0.05))  # 0.5 * 0.1 + 0.5 * 0
    assert torch.allclose(combined(1.0, 30.0), torch.full((2, 1), 0.05))
    assert torch.allclose(combined(1.0, 50.0), torch.full((2, 1), 0.1))  # 0.5 * 0.2
    assert torch.allclose(combined(0.0, 10.0), torch.full((2, 1), -0.025))  # below q_a goes negative


def test_forward_constant_q_a_maps_are_zero_everywhere() -> None:
    module = _fitted(st=(0.5, 2.0), ae=(0.1, 0.3))
    result = module(torch.full((1, 1, 56, 56), 0.5), torch.full((1, 1, 56, 56), 0.1), (256, 256))
    assert result.shape == (1, 1, 256, 256)
    assert torch.allclose(result, torch.zeros_like(result), atol=1e-7)


def test_forward_pads_by_four_before_upsampling() -> None:
    module = _fitted(st=(0.5, 2.0), ae=(0.1, 0.3))
    result = module(torch.full((1, 1, 56, 56), 2.0), torch.full((1, 1, 56, 56), 0.3), (256, 256))
    # 56 + 2 * 4 = 64 px upsampled x4: the outer 4 map px (16 image px) come from the zero padding.
    assert torch.allclose(result[..., 20:236, 20:236], torch.full((1, 1, 216, 216), 0.1))
    border = torch.cat([result[..., :14, :].flatten(), result[..., -14:, :].flatten(), result[..., :, :14].flatten()])
    assert torch.equal(border, torch.zeros_like(border))
    # the transition from 0 to 0.1 lies around image px 16 (bilinear, align_corners=False)
    row = result[0, 0, :, 128]
    assert 0 < row[15] < row[16] < 0.1
    assert torch.allclose(row[16], torch.tensor(0.0625))


def test_forward_rectangular_output_and_non_square_maps() -> None:
    module = _fitted(st=(0.0, 1.0), ae=(0.0, 1.0))
    st = torch.zeros(1, 1, 56, 72)
    st[..., 20, 30] = 1.0  # one hot spot
    result = module(st, torch.zeros_like(st), (256, 320))
    assert result.shape == (1, 1, 256, 320)
    peak = torch.nonzero(result[0, 0] == result.max())[0]
    # map px (20, 30) -> padded (24, 34) -> image centre (24.5 * 4, 34.5 * 4) = (98, 138)
    assert abs(int(peak[0]) - 97.5) <= 1 and abs(int(peak[1]) - 137.5) <= 1
    assert result.max() <= 0.05 + 1e-6


def test_quantiles_are_state_dict_buffers() -> None:
    module = _fitted(st=(1.0, 2.0), ae=(3.0, 4.0))
    state = module.state_dict()
    assert set(state) == {"st_quantiles", "ae_quantiles", "branch_weights"}
    restored = AnomalyMapGenerator()
    restored.load_state_dict(state)
    assert restored.is_fitted
    assert restored.st_quantiles.tolist() == [1.0, 2.0]
    assert restored.ae_quantiles.tolist() == [3.0, 4.0]
    assert list(module.parameters()) == []  # not trainable


def test_native_maps_on_two_grids_meet_at_the_images_size_and_equal_the_default_on_one_grid() -> None:
    default, native = _fitted(st=(0.0, 1.0), ae=(0.0, 2.0)), _fitted(st=(0.0, 1.0), ae=(0.0, 2.0))
    native.native = True
    st, ae = torch.rand(2, 1, 56, 72), torch.rand(2, 1, 56, 72)
    assert torch.allclose(native(st, ae, (256, 320)), default(st, ae, (256, 320)), atol=1e-6)
    local = torch.zeros(1, 1, 152, 152)  # a 640 x 640 image's local map
    local[..., 76, 76] = 1.0
    combined = native(local, torch.zeros(1, 1, 56, 56), (640, 640))  # the global map from the 256-px view
    assert combined.shape == (1, 1, 640, 640)
    peak = torch.nonzero(combined[0, 0] == combined.max())[0]
    assert abs(int(peak[0]) - 4 * (76 + 4.5)) <= 1  # the local hot spot lands where it is on the image
    # paper weights: half of the normalised (x 0.1) local map; the global map (at q_a everywhere) adds nothing
    assert torch.allclose(combined, 0.5 * native._to_image(0.1 * local, (640, 640)))


def test_smoothing_is_off_by_default_and_keeps_sigma_out_of_the_state_dict() -> None:
    anomaly_map = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(AnomalyMapGenerator().smooth(anomaly_map), anomaly_map)  # the paper: no smoothing
    smoothing = AnomalyMapGenerator(native=True, smoothing_sigma=4.0)
    assert set(smoothing.state_dict()) == set(AnomalyMapGenerator(native=True).state_dict())
    smoothing.load_state_dict(AnomalyMapGenerator(native=True).state_dict())  # a sigma can be set after training


def test_smoothing_spreads_a_peak_by_its_sigma_and_keeps_the_mass_and_size() -> None:
    peak = torch.zeros(1, 1, 41, 53)
    peak[0, 0, 20, 26] = 1.0
    for sigma in (1.0, 4.0):
        smoothed = AnomalyMapGenerator(smoothing_sigma=sigma).smooth(peak)
        assert smoothed.shape == peak.shape
        assert float(smoothed.sum()) == pytest.approx(1.0, abs=1e-4)  # far from the border: nothing reflected
        row = smoothed[0, 0, 20]
        variance = float((row / row.sum() * (torch.arange(53) - 26.0) ** 2).sum())
        assert variance == pytest.approx(sigma**2, rel=0.05)


@pytest.mark.parametrize("sigma", [-1.0, float("nan")])
def test_a_bad_sigma_is_refused_by_name(sigma: float) -> None:
    with pytest.raises(ValueError, match="map_smoothing_sigma"):
        AnomalyMapGenerator(smoothing_sigma=sigma)
