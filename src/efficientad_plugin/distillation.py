"""Teacher distillation: a PDN learns to reproduce a pretrained backbone's patch features (paper §3.1, App. A).

The backbone sees images at twice the PDN's resolution; its stride-8 and stride-16 features are aggregated over
3x3 neighbourhoods (as PatchCore), pooled to 384 channels, normalised per channel over the training images, and the
PDN, with padding on so both maps align, regresses them with an MSE loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from .backbones import timm_state_dict
from .hardware import auto_bf16, cpu_description
from .images import list_images, read_rgb
from .pdn import TEACHER_CHANNELS, PatchDescriptionNetwork, load_pdn_state_dict
from .teacher_weights import load_teacher_state_dict, sha256_of
from .torch_model import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

AGGREGATION_DIMENSION = 1024  # per-layer width before the final pooling to 384 channels (paper, PatchCore)
GRAYSCALE_PROBABILITY = 0.1
# Settings that do not change the result, so a resumed run may use other values.
_RESUMABLE_CHANGES = frozenset({"num_workers", "checkpoint_every"})
PRECISIONS = ("auto", "32", "bf16")
SCHEDULES = ("constant", "one_cycle")


@dataclass
class DistillationConfig:
    """Everything that determines a distillation run; saved in checkpoints and the provenance sidecar."""

    images: str
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str | None = None
    layers: tuple[int, ...] = (2, 3)  # timm feature indices: stride 8 and stride 16
    model_size: str = "small"
    image_size: int = 256  # PDN input; the backbone sees 2x
    crop_size: int | None = None  # PDN-side random crop of the resized image; None = whole image (paper)
    steps: int = 60_000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-5
    statistics_images: int = 1_000
    seed: int = 0
    precision: str = "auto"  # "32", "bf16", or "auto": bf16 where the device computes it natively (see hardware)
    schedule: str = "constant"  # "constant" (paper) or "one_cycle": linear warm-up, cosine decay over ``steps``
    warmup_fraction: float = 0.05  # one_cycle: share of ``steps`` spent warming up from lr/25
    init_weights: str | None = None  # start from this teacher state dict (fresh optimiser): a further leg
    num_workers: int = 2
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            msg = f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}."
            raise ValueError(msg)
        if self.schedule not in SCHEDULES:
            msg = f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}."
            raise ValueError(msg)

    @property
    def pdn_input(self) -> int:
        """Side of the PDN's input crop."""
        return self.crop_size or self.image_size


def load_backbone(name: str, weights: str | Path | None, layers: Sequence[int]) -> nn.Module:
    """A timm feature extractor for ``layers`` with ImageNet weights from a local file (see ``backbones``).

    Without a file, timm's own pretrained weights are used, which needs them in timm's cache or the internet.
    """
    if weights is None:
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(layers))
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(timm_state_dict(name, weights))
    extractor = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers))
    missing, _ = extractor.load_state_dict(full.state_dict(), strict=False)
    if missing:
        msg = f"timm's feature extractor for {name} needs weights the full model lacks: {missing[:5]}"
        raise ValueError(msg)
    return extractor


class FeatureTarget(nn.Module):
    """Backbone features aggregated over 3x3 neighbourhoods, at stride 8, pooled to ``out_channels``."""

    def __init__(self, backbone: nn.Module, out_channels: int = TEACHER_CHANNELS) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.out_channels = out_channels
        config = getattr(backbone, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(config.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.get("std", IMAGENET_STD)).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 2H, 2W]`` images in [0, 1] -> ``[B, out_channels, H/4, W/4]`` targets."""
        features = self.backbone((images - self.mean) / self.std)
        size = features[0].shape[-2:]
        pooled = []
        for feature in features:
            feature = F.avg_pool2d(feature, 3, stride=1, padding=1)
            feature = F.interpolate(feature, size=size, mode="bilinear") if feature.shape[-2:] != size else feature
            pooled.append(_pool_channels(feature, AGGREGATION_DIMENSION))
        return _pool_channels(torch.cat(pooled, dim=1), self.out_channels)


def _pool_channels(features: torch.Tensor, channels: int) -> torch.Tensor:
    batch, _, height, width = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, 1, features.shape[1])
    return F.adaptive_avg_pool1d(flat, channels).reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class DistillationImages(Dataset):
    """Pairs (backbone input at 2x, PDN input) of one image, with the paper's random grayscale applied to both.

    Items are addressed by ``(index, seed)`` so that the augmentation of every sample is fixed by the sampler.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, crop_size: int | None) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.crop_size = crop_size or image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        large = TF.resize(read_rgb(self.paths[index]), [2 * self.image_size] * 2, antialias=True)
        if torch.rand(1, generator=generator) < GRAYSCALE_PROBABILITY:
            large = TF.rgb_to_grayscale(large, num_output_channels=3)
        if self.crop_size < self.image_size:
            top, left = (int(torch.randint(self.image_size - self.crop_size + 1, (1,), generator=generator)) * 2
                         for _ in range(2))
            large = large[:, top : top + 2 * self.crop_size, left : left + 2 * self.crop_size]
        return large, TF.resize(large, [self.crop_size] * 2, antialias=True)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start``..``stop``; the batch of step n depends only on ``seed`` and n (exact resume)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.num_images, self.batch_size, self.seed, self.start, self.stop = num_images, batch_size, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The ``(image index, augmentation seed)`` pairs of step ``step``: epochs are seeded permutations."""
        first = step * self.batch_size
        pairs = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_images)
            order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed + epoch))
            pairs.append((int(order[offset]), self.seed * 1_000_003 + position))
        return pairs

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return (self.batch(step) for step in range(self.start, self.stop))


@torch.no_grad()
def target_statistics(target: FeatureTarget, dataset: DistillationImages, config: DistillationConfig,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the targets over ``config.statistics_images`` images (running sums, float64)."""
    count = min(config.statistics_images, len(dataset))
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed + 7919, 0,
                               math.ceil(count / config.batch_size))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers)
    total = squares = torch.zeros(target.out_channels, dtype=torch.float64, device=device)
    elements = 0
    for large, _ in loader:
        features = target(large.to(device)).double()
        total = total + features.sum(dim=(0, 2, 3))
        squares = squares + features.pow(2).sum(dim=(0, 2, 3))
        elements += features[:, 0].numel()
    mean = total / elements
    std = (squares / elements - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def distill(config: DistillationConfig, output: Path, resume: bool = False, progress: bool = True,
            max_minutes: float | None = None) -> Path:
    """Run (or resume) a distillation; write ``output`` (teacher state dict), its JSON sidecar and a loss curve.

    A checkpoint ``<output>.ckpt`` is written every ``checkpoint_every`` steps and at the end. With ``max_minutes``
    the run stops after that much wall time (this call's), at a checkpoint, and writes the teacher as it is;
    ``resume`` continues it.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output.with_suffix(".ckpt")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    paths = list_images(config.images)
    dataset = DistillationImages(paths, config.image_size, config.crop_size)
    target = FeatureTarget(load_backbone(config.backbone, config.backbone_weights, config.layers)).to(device)
    pdn = PatchDescriptionNetwork(config.model_size, TEACHER_CHANNELS, padding=True).to(device)
    if config.init_weights is not None:
        load_pdn_state_dict(pdn, load_teacher_state_dict(config.init_weights, config.model_size)[0], config.init_weights)
    optimizer = torch.optim.Adam(pdn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = learning_rate_schedule(optimizer, config)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and auto_bf16(device))
    logger.info("Distilling in %s on %s", "bf16" if bf16 else "fp32",
                torch.cuda.get_device_name() if device.type == "cuda" else cpu_description())
    start, history, elapsed = 0, [], 0.0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        changed = {key: (state["config"].get(key), value) for key, value in _jsonable(config).items()
                   if key not in _RESUMABLE_CHANGES and state["config"].get(key) != value}
        if changed:
            details = "; ".join(f"{key}: was {old!r}, now {new!r}" for key, (old, new) in changed.items())
            msg = f"{checkpoint_path} was written by a run with other settings ({details}); resume with the same ones."
            raise ValueError(msg)
        pdn.load_state_dict(state["pdn"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        mean, std = state["target_mean"].to(device), state["target_std"].to(device)
        start, history, elapsed = state["step"], state["history"], state["elapsed"]
        logger.info("Resuming %s at step %d", checkpoint_path, start)
    else:
        mean, std = target_statistics(target, dataset, config, device)
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.steps)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                        persistent_workers=config.num_workers > 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def save_checkpoint(step: int) -> None:
        state = {"step": step, "pdn": pdn.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "target_mean": mean,
                 "target_std": std, "history": history, "elapsed": elapsed, "config": _jsonable(config)}
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    from tqdm import tqdm

    bar = tqdm(loader, total=len(sampler), initial=0, desc=f"distil {start}->{config.steps}", disable=not progress)
    step, began = start, time.perf_counter()
    deadline = math.inf if max_minutes is None else time.perf_counter() + 60 * max_minutes
    for large, small in bar:
        with autocast:
            targets = (target(large.to(device)) - mean) / std
            loss = F.mse_loss(pdn(TF.normalize(small.to(device), IMAGENET_MEAN, IMAGENET_STD)).float(), targets.float())
        if not torch.isfinite(loss):
            save_checkpoint(step)
            msg = f"Distillation loss is {loss.item()} at step {step}; the last good state is in {checkpoint_path}."
            raise FloatingPointError(msg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        history.append((step, loss.item()))
        bar.set_postfix(loss=f"{history[-1][1]:.4f}")
        out_of_time = time.perf_counter() > deadline
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            elapsed += time.perf_counter() - began
            began = time.perf_counter()
            save_checkpoint(step)
        if out_of_time:
            logger.info("Stopping at step %d after %.0f minutes; --resume continues", step, max_minutes)
            break
    torch.save({key: value.detach().cpu() for key, value in pdn.state_dict().items()}, output)
    leg = {"precision": "bf16" if bf16 else "32",
           "machine": torch.cuda.get_device_name() if device.type == "cuda" else cpu_description()}
    _write_provenance(config, output, history, elapsed, len(paths), leg)
    return output


def learning_rate_schedule(optimizer: torch.optim.Optimizer,
                           config: DistillationConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's constant rate, or torch's one-cycle (warm-up from lr/25, cosine decay to lr/2500) over ``steps``.

    A CPU affords a few thousand steps, not the paper's 60,000: a higher peak rate with decay gets further in them.
    Adam's betas stay fixed (no momentum cycling).
    """
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                               pct_start=config.warmup_fraction, cycle_momentum=False,
                                               anneal_strategy="cos", div_factor=25.0, final_div_factor=100.0)


def _jsonable(config: DistillationConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _previous_legs(init_weights: str | None) -> list[dict]:
    """The legs recorded in the sidecar JSON of the weights this run started from (one leg for a flat sidecar)."""
    if init_weights is None:
        return []
    sidecar = Path(init_weights).with_suffix(".json")
    if not sidecar.is_file():
        return [{"file": Path(init_weights).name, "provenance": "none found"}]
    previous = json.loads(sidecar.read_text())
    return previous.get("legs") or [{key: value for key, value in previous.items() if key != "legs"}]


def _write_provenance(config: DistillationConfig, output: Path, history: list, elapsed: float,
                      num_images: int, leg: dict) -> None:
    tail = [loss for _, loss in history[-50:]]
    this_leg = {**_jsonable(config), **leg, "steps_done": history[-1][0] if history else 0,
                "final_loss": sum(tail) / len(tail) if tail else None, "wall_seconds": round(elapsed, 1)}
    provenance = {
        **_jsonable(config),
        "num_images": num_images,
        "steps_done": history[-1][0] if history else 0,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "wall_seconds": round(elapsed, 1),
        "image_steps_per_second": round(len(history) * config.batch_size / elapsed, 3) if elapsed else None,
        "sha256": sha256_of(output),
        "file": output.name,
        **leg,
        "legs": [*_previous_legs(config.init_weights), this_leg],
    }
    output.with_suffix(".json").write_text(json.dumps(provenance, indent=2))
    _plot_loss(history, output.with_suffix(".loss.png"))


def _plot_loss(history: list, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history, strict=True)
        axis.plot(steps, losses, linewidth=0.6, alpha=0.4, label="step")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]
        axis.plot(steps, smooth, linewidth=1.5, label=f"mean of {window}")
    axis.set_xlabel("step")
    axis.set_ylabel("MSE to normalised backbone features")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
