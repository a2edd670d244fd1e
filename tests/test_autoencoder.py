"""Tests for efficientad_plugin.autoencoder: size, output shape, image-size check and dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efficientad_plugin.autoencoder import AutoEncoder, check_image_size
from efficientad_plugin.pdn import pdn_output_size


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def autoencoder() -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder((256, 256))


def test_parameter_count(autoencoder: AutoEncoder) -> None:
    assert sum(parameter.numel() for parameter in autoencoder.parameters()) == 1_096_320


def test_layers_match_paper_table_7(autoencoder: AutoEncoder) -> None:
    convs = [module for module in autoencoder.encoder if isinstance(module, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (4, 4), (2, 2), (1, 1)),
        (32, (4, 4), (2, 2), (1, 1)),
        (64, (4, 4), (2, 2), (1, 1)),
        (64, (4, 4), (2, 2), (1, 1)),
        (64, (4, 4), (2, 2), (1, 1)),
        (64, (8, 8), (1, 1), (0, 0)),
    ]
    assert not isinstance(autoencoder.encoder[-1], nn.ReLU)  # no ReLU on the bottleneck
    assert len(autoencoder.decoder_stages) == 6
    # The paper's bilinear upsampling sizes at 256 px.
    assert autoencoder.upsample_sizes == [(3, 3), (8, 8), (15, 15), (32, 32), (63, 63), (127, 127)]
    assert all(isinstance(stage[-1], nn.Dropout) and stage[-1].p == 0.2 for stage in autoencoder.decoder_stages)
    assert autoencoder.head[-1].out_channels == 384
    assert not isinstance(autoencoder.head[-1], nn.ReLU)


def test_real_output_shape_at_256(autoencoder: AutoEncoder) -> None:
    autoencoder.eval()
    with torch.no_grad():
        output = autoencoder(torch.randn(2, 3, 256, 256))
    assert tuple(output.shape) == (2, 384, 56, 56)
    assert (output < 0).any()  # the head's last conv has no ReLU


@pytest.mark.parametrize("image_size", [256, (256, 256), (256, 512), (300, 301), (333, 257), (512, 288)])
def test_output_shape_equals_pdn_output_size(image_size: int | tuple[int, int]) -> None:
    size = check_image_size(image_size)
    # Shape propagation on the meta device runs the real modules without computing values.
    with torch.device("meta"):
        autoencoder = AutoEncoder(size).eval()
        output = autoencoder(torch.empty(1, 3, *size))
    assert autoencoder.output_size == pdn_output_size(size)
    assert tuple(output.shape) == (1, 384, *pdn_output_size(size))


def test_real_output_shape_rectangular_odd() -> None:
    autoencoder = AutoEncoder((333, 257)).eval()
    with torch.no_grad():
        output = autoencoder(torch.randn(1, 3, 333, 257))
    assert tuple(output.shape) == (1, 384, *pdn_output_size((333, 257)))


def test_check_image_size_accepts_int_tuple_and_list() -> None:
    assert check_image_size(256) == (256, 256)
    assert check_image_size((256, 320)) == (256, 320)
    assert check_image_size([300, 256]) == (300, 256)
    assert isinstance(check_image_size([300, 256]), tuple)


@pytest.mark.parametrize("bad", [(255, 300), 224, (300, 255), (256,), (256, 256, 3)])
def test_check_image_size_rejects_small_or_malformed(bad) -> None:
    with pytest.raises(ValueError, match="256") as error:
        check_image_size(bad)
    assert repr(bad) in str(error.value)


def test_constructor_rejects_small_image_size() -> None:
    with pytest.raises(ValueError, match="256"):
        AutoEncoder((224, 224))


def test_dropout_only_in_train_mode(autoencoder: AutoEncoder) -> None:
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        autoencoder.eval()
        first, second = autoencoder(image), autoencoder(image)
        autoencoder.train()
        train_first, train_second = autoencoder(image), autoencoder(image)
    autoencoder.eval()
    assert torch.equal(first, second)
    assert not torch.allclose(train_first, train_second)
    assert not torch.allclose(train_first, first)
