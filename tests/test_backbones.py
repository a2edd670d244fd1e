"""Tests for efficientad_plugin.backbones: local ImageNet weights for timm, installed for offline use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientad_plugin.backbones import install_timm_weights, lite_weights_file, resolve_weights_file, timm_state_dict


def test_weights_under_other_names_map_onto_timm_by_order(backbone_file: Path) -> None:
    state_dict = timm_state_dict("tf_efficientnet_lite0", backbone_file)
    original = list(torch.load(backbone_file, weights_only=True).values())
    assert next(iter(state_dict)) == "conv_stem.weight"
    for mapped, tensor in zip(state_dict.values(), original, strict=True):
        assert torch.equal(mapped, tensor)


def test_weights_of_another_model_are_refused(backbone_file: Path) -> None:
    with pytest.raises(ValueError, match=rf"{backbone_file.name} does not hold weights of timm's resnet18"):
        timm_state_dict("resnet18", backbone_file)


def test_missing_and_unknown_weights_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        resolve_weights_file(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="choose one of lite0, lite1, lite2"):
        lite_weights_file("lite9")


def test_installed_weights_load_with_pretrained_true_offline(backbone_file: Path, tmp_path: Path) -> None:
    """timm and anomalib's PatchCore load the installed weights with the network disabled, in a fresh process."""
    cache = tmp_path / "hub"
    written = install_timm_weights("tf_efficientnet_lite0", backbone_file, cache)
    assert written == install_timm_weights("tf_efficientnet_lite0", backbone_file, cache)  # idempotent
    script = (
        "import timm, torch, sys\n"
        "model = timm.create_model('tf_efficientnet_lite0', pretrained=True)\n"
        "expected = list(torch.load(sys.argv[1], weights_only=True).values())[0]\n"
        "assert torch.equal(model.conv_stem.weight, expected)\n"
        "from anomalib.models import Patchcore\n"
        "Patchcore(backbone='tf_efficientnet_lite0', layers=['blocks.2', 'blocks.4'])\n"
        "print('loaded')\n"
    )
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(backbone_file)], env=environment,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("loaded")
