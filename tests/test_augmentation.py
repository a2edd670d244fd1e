"""Tests for efficientad_plugin.augmentation: the autoencoder branch's random colour adjustment."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from efficientad_plugin import augmentation
from efficientad_plugin.augmentation import random_color_adjustment


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))


def test_shape_dtype_and_range(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    for _ in range(30):
        output = random_color_adjustment(image)
        assert output.shape == image.shape
        assert output.dtype == image.dtype
        assert output.min() >= 0 and output.max() <= 1
    # inputs are not modified in place
    assert torch.equal(image, torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0)))


def test_deterministic_under_manual_seed(image: torch.Tensor) -> None:
    torch.manual_seed(123)
    first = [random_color_adjustment(image) for _ in range(5)]
    torch.manual_seed(123)
    second = [random_color_adjustment(image) for _ in range(5)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(first[0], other) for other in first[1:])  # draws differ between calls


def test_uses_each_adjustment_uniformly_with_factors_in_range(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float]] = []

    def recorder(name: str):
        def adjust(image: torch.Tensor, factor: float) -> torch.Tensor:
            calls.append((name, factor))
            return image

        return adjust

    monkeypatch.setattr(
        augmentation, "_ADJUSTMENTS", (recorder("brightness"), recorder("contrast"), recorder("saturation"))
    )
    torch.manual_seed(0)
    image = torch.rand(1, 3, 4, 4)
    num_draws = 600
    for _ in range(num_draws):
        assert random_color_adjustment(image) is image
    counts = Counter(name for name, _ in calls)
    assert set(counts) == {"brightness", "contrast", "saturation"}
    assert all(150 <= count <= 250 for count in counts.values()), counts  # 200 each expected
    factors = torch.tensor([factor for _, factor in calls])
    assert factors.min() >= 0.8 and factors.max() <= 1.2
    assert factors.min() < 0.82 and factors.max() > 1.18  # the whole range U(0.8, 1.2) is used
    assert abs(float(factors.mean()) - 1.0) < 0.02


def test_the_real_adjustments_are_brightness_contrast_saturation() -> None:
    assert augmentation._ADJUSTMENTS == (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


def test_brightness_factor_bounds_on_constant_gray_image() -> None:
    # On a constant gray image contrast and saturation are the identity and brightness scales by the factor.
    image = torch.full((1, 3, 8, 8), 0.5)
    torch.manual_seed(1)
    values = []
    for _ in range(200):
        output = random_color_adjustment(image)
        assert torch.allclose(output, output[0, 0, 0, 0].expand_as(output))  # stays constant and gray
        values.append(float(output[0, 0, 0, 0]))
    values_tensor = torch.tensor(values)
    assert values_tensor.min() >= 0.4 - 1e-6 and values_tensor.max() <= 0.6 + 1e-6
    changed = (values_tensor - 0.5).abs() > 1e-3
    assert 0.15 < changed.float().mean() < 0.5  # about one third of the draws are brightness
    assert values_tensor.min() < 0.45 and values_tensor.max() > 0.55


def test_colour_image_changes_in_one_of_three_ways() -> None:
    # Every output equals brightness, contrast or saturation of the input with some factor in [0.8, 1.2];
    # candidates are tabulated once on a 0.001 grid of factors.
    image = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1).expand(1, 3, 6, 6).contiguous()
    adjustments = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
    }
    factors = torch.linspace(0.8, 1.2, 401).tolist()
    candidates = {
        name: torch.stack([adjust(image, factor)[0, :, 0, 0] for factor in factors])
        for name, adjust in adjustments.items()
    }
    torch.manual_seed(7)
    used = Counter()
    for _ in range(40):
        output = random_color_adjustment(image)
        assert torch.allclose(output, output[..., :1, :1].expand_as(output))  # still a constant image
        colour = output[0, :, 0, 0]
        distances = {name: float((table - colour).abs().amax(dim=1).min()) for name, table in candidates.items()}
        best = min(distances, key=distances.get)
        assert distances[best] < 2e-3, (colour, distances)
        used[best] += 1
    assert set(used) == set(adjustments), used


def test_generator_makes_the_draw_independent_of_the_global_rng(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    first = random_color_adjustment(image, torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    assert torch.equal(random_color_adjustment(image, torch.Generator().manual_seed(7)), first)
    outputs = {tuple(random_color_adjustment(image, torch.Generator().manual_seed(seed))[0, 0, 0, :2].tolist())
               for seed in range(6)}
    assert len(outputs) > 1


def test_random_crop_is_a_window_of_the_image_drawn_from_the_generator() -> None:
    from efficientad_plugin.augmentation import random_crop

    images = torch.arange(2 * 3 * 300 * 280, dtype=torch.float32).view(2, 3, 300, 280)
    crops = [random_crop(images, (256, 256), torch.Generator().manual_seed(seed)) for seed in range(20)]
    assert all(crop.shape == (2, 3, 256, 256) for crop in crops)
    corners = {(int(crop[0, 0, 0, 0]) // 280, int(crop[0, 0, 0, 0]) % 280) for crop in crops}
    assert len(corners) > 5 and all(0 <= top <= 44 and 0 <= left <= 24 for top, left in corners)
    top, left = next(iter(corners))
    again = [c for c in crops if (int(c[0, 0, 0, 0]) // 280, int(c[0, 0, 0, 0]) % 280) == (top, left)][0]
    assert torch.equal(again, images[..., top : top + 256, left : left + 256])  # the same window on every image
    repeat = random_crop(images, (256, 256), torch.Generator().manual_seed(3))
    assert torch.equal(repeat, crops[3])  # the seed decides, not the global generator
