"""Patch description networks (PDN), the teacher and student of EfficientAD (paper §3.1, Fig. 2)."""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

logger = logging.getLogger(__name__)

MODEL_SIZES = ("small", "medium")
TEACHER_CHANNELS = 384
PATCH_SIDE = 33  # receptive field of one PDN output: each descriptor sees a 33x33 patch

# (out_channels, kernel, padding when padding is on), per conv; "pool" is a 2x2 average pool.
# The last conv's width is the network's output width and it has no ReLU.
_LAYOUTS: dict[str, tuple] = {
    "small": ((128, 4, 3), "pool", (256, 4, 3), "pool", (256, 3, 1), (None, 4, 0)),
    "medium": ((256, 4, 3), "pool", (512, 4, 3), "pool", (512, 1, 0), (512, 3, 1), (None, 4, 0), (None, 1, 0)),
}


def check_model_size(model_size: str) -> str:
    """Return ``model_size`` if it names a PDN size, else raise a ``ValueError`` listing the sizes."""
    if model_size not in MODEL_SIZES:
        msg = f"model_size must be one of {MODEL_SIZES}, got {model_size!r}."
        raise ValueError(msg)
    return model_size


def pdn_output_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of a PDN output without padding (both sizes share the 33x33 receptive field)."""

    def one_side(length: int) -> int:
        length = (length - 3) // 2  # conv 4x4, pool 2
        length = (length - 3) // 2  # conv 4x4, pool 2
        return length - 2 - 3  # conv 3x3, conv 4x4 (the 1x1 convs of PDN-M keep the size)

    return one_side(image_size[0]), one_side(image_size[1])


class PatchDescriptionNetwork(nn.Sequential):
    """PDN-S or PDN-M: four (or six) convolutions, two average pools, one descriptor per 33x33 patch.

    The input is an ImageNet-normalised RGB image. ``padding`` is off for anomaly detection, as in the paper,
    and on for teacher distillation, where the output must align with the backbone's feature map.
    Parameters are named ``conv1`` ... ``convN``, the names of anomalib's released teacher files.
    """

    def __init__(self, model_size: str = "small", out_channels: int = TEACHER_CHANNELS, padding: bool = False) -> None:
        layout = _LAYOUTS[check_model_size(model_size)]
        num_convs = sum(layer != "pool" for layer in layout)
        layers: dict[str, nn.Module] = {}
        in_channels = 3
        for layer in layout:
            if layer == "pool":
                pool_index = sum(name.startswith("pool") for name in layers) + 1
                layers[f"pool{pool_index}"] = nn.AvgPool2d(2, stride=2, padding=1 if padding else 0)
                continue
            width, kernel, pad = layer
            width = width or out_channels
            index = sum(name.startswith("conv") for name in layers) + 1
            layers[f"conv{index}"] = nn.Conv2d(in_channels, width, kernel, padding=pad if padding else 0)
            if index < num_convs:
                layers[f"relu{index}"] = nn.ReLU(inplace=True)
            in_channels = width
        super().__init__(OrderedDict(layers))
        self.model_size = model_size
        self.out_channels = out_channels

    def partial_outputs(
        self, inputs: Sequence[torch.Tensor], channels: Sequence[slice], batched: bool | None = None,
        measure: bool = False,
    ) -> list[torch.Tensor]:
        """The outputs of several batches, each restricted to its own slice of output channels.

        The last convolution computes only the requested channels of each batch: the same numbers as slicing full
        outputs, for less work (the student's last convolution is half of its cost, and each training pass needs
        half of its channels). ``batched`` runs the layers before it once, on all batches concatenated (only
        where their sizes agree). ``None`` batches off the CPU; on the CPU it runs one pass per batch or, with
        ``measure``, whichever pass :func:`batched_pass_is_faster` measured faster here, because oneDNN's batch-1
        and batch-3 speeds differ by CPU and precision (Zen 4: batch-1 faster in fp32, batched under bf16).
        """
        # (batched=False compares no sizes: exported graphs with dynamic sizes come this way, unhashable)
        if batched is not False and len({batch.shape[1:] for batch in inputs}) != 1:
            batched = False
        elif batched is None:
            on_cpu = inputs[0].device.type == "cpu"
            batched = not on_cpu or (measure and batched_pass_is_faster(self, inputs, channels))
        # nn.Sequential(...) rather than self[:-1], whose slicing would call this class's constructor
        body, last = nn.Sequential(*list(self)[:-1]), self[-1]
        if batched:
            hidden = body(torch.cat(list(inputs))).split([len(batch) for batch in inputs])
        else:
            hidden = [body(batch) for batch in inputs]
        return [F.conv2d(part, last.weight[selected], last.bias[selected], last.stride, last.padding)
                for part, selected in zip(hidden, channels, strict=True)]


# (network size, input shapes, threads, autocast dtype or None) -> whether one batched pass was faster
_FASTER_PASS: dict[tuple, bool] = {}


def batched_pass_is_faster(pdn: PatchDescriptionNetwork, inputs: Sequence[torch.Tensor], channels: Sequence[slice],
                           repeats: int = 2, timer: Callable[[], float] = time.perf_counter) -> bool:
    """Whether one batched forward and backward pass beats one pass per batch, timed once per process on this CPU.

    Timed on a network of ``pdn``'s layout (``pdn`` and its gradients stay untouched) with random inputs of the
    given shapes, in the current autocast state, alternating the two passes after one warm-up of each; the fastest
    of ``repeats`` counts. Cached per network size, shapes, thread count and autocast dtype, so a training run pays
    it once (six passes: about 20 s for PDN-S on three 256x256 images in fp32 on 2 cores). torch and oneDNN have
    no such choice (``cudnn.benchmark`` is for convolution algorithms on CUDA only), so it is ours.
    """
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    key = (pdn.model_size, tuple(tuple(batch.shape) for batch in inputs), torch.get_num_threads(), autocast)
    if key in _FASTER_PASS:
        return _FASTER_PASS[key]
    # a fresh network of the same layout: its own gradients, none of ``pdn``'s hooks (timing needs no weights)
    padding = any(module.padding != 0 for module in pdn.modules() if isinstance(module, nn.AvgPool2d))
    probe = PatchDescriptionNetwork(pdn.model_size, pdn.out_channels, padding=padding)
    samples = [torch.rand(batch.shape) for batch in inputs]
    seconds: dict[bool, list[float]] = {True: [], False: []}
    with torch.enable_grad():
        for repeat in range(repeats + 1):
            for batched in (True, False):
                started = timer()
                outputs = probe.partial_outputs(samples, channels, batched=batched)
                sum(output.float().mean() for output in outputs).backward()
                elapsed = timer() - started
                probe.zero_grad(set_to_none=True)
                if repeat:  # the first round warms up oneDNN's kernels
                    seconds[batched].append(elapsed)
    _FASTER_PASS[key] = min(seconds[True]) < min(seconds[False])
    logger.info("Student pass on this CPU (%s, %d threads, autocast %s): %s (%.3f s batched, %.3f s per batch).",
                pdn.model_size, key[2], autocast, "batched" if _FASTER_PASS[key] else "one per batch",
                min(seconds[True]), min(seconds[False]))
    return _FASTER_PASS[key]


def load_pdn_state_dict(pdn: PatchDescriptionNetwork, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load PDN weights saved with anomalib's names (``conv1.weight``) or as ``nn.Sequential`` (``0.weight``).

    Sequential indices are mapped to convolutions in order, so nelson1425's ``teacher_small.pth`` loads too.
    ``source`` names the file in error messages.
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if all(re.fullmatch(r"\d+\.(weight|bias)", key) for key in state_dict):
        indices = sorted({int(key.split(".")[0]) for key in state_dict})
        renamed = {str(index): f"conv{position}" for position, index in enumerate(indices, start=1)}
        state_dict = {f"{renamed[key.split('.')[0]]}.{key.split('.')[1]}": value for key, value in state_dict.items()}
    expected = pdn.state_dict()
    problems = [key for key in expected if key not in state_dict]
    problems += [key for key in state_dict if key not in expected]
    problems += [
        f"{key}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if problems:
        msg = (
            f"{source} does not hold weights of a PDN-{pdn.model_size[0].upper()} with {pdn.out_channels} output "
            f"channels (mismatched: {', '.join(problems[:6])}). Check model_size and that the file is a teacher."
        )
        raise ValueError(msg)
    pdn.load_state_dict(state_dict)
