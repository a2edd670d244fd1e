"""Everything that determines a distillation run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PRECISIONS = ("auto", "32", "bf16")
SCHEDULES = ("constant", "one_cycle")
# Settings that do not change the result, so a resumed run may use other values.
RESUMABLE_CHANGES = frozenset({"num_workers", "checkpoint_every"})


@dataclass
class DistillationConfig:
    """Saved in checkpoints and in the provenance sidecar of the teacher."""

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
        self.layers = tuple(self.layers)
        if self.precision not in PRECISIONS:
            msg = f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}."
            raise ValueError(msg)
        if self.schedule not in SCHEDULES:
            msg = f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}."
            raise ValueError(msg)
        if self.steps < 1 or self.batch_size < 1:
            msg = f"steps and batch_size must be positive, got steps={self.steps}, batch_size={self.batch_size}."
            raise ValueError(msg)

    @property
    def pdn_input(self) -> int:
        """Side of the PDN's input crop."""
        return self.crop_size or self.image_size

    def to_dict(self) -> dict:
        """The settings as JSON types (tuples become lists), as stored in checkpoints and sidecars."""
        return json.loads(json.dumps(asdict(self)))
