"""Per-step random generators: every random draw of a training step is a function of the seed and the step only.

Nothing random is taken from the global RNG during training, whose state a checkpoint does not hold, so a run
resumed at step ``n`` draws what an uninterrupted run draws at step ``n``.
"""

from __future__ import annotations

import torch

PENALTY_STREAM = 0
AUGMENTATION_STREAM = 1
_STREAMS = 2


def combined_seed(seed: int, index: int) -> int:
    """A seed for item ``index`` (a step, a sample) of a run seeded with ``seed``; distinct for distinct pairs."""
    return seed * 1_000_003 + index


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator for one purpose (``stream``) at one training step, independent of the other streams and steps."""
    return torch.Generator().manual_seed((combined_seed(seed, step) * _STREAMS + stream) % 2**63)
