"""Learning-rate schedules of EfficientAD training and teacher distillation, built from torch's schedulers.

The schedule's shape (its length, where it decays) comes from the run's arguments; a checkpoint only says how far
the run has got. So a run resumed with a larger step budget follows the schedule of that budget
(:func:`keep_position_only`), instead of decaying where the shorter run would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

LR_DECAY_AT = 0.95  # paper: the learning rate drops x0.1 after 95 % of the steps (66,500 of 70,000)
# Attributes of torch's schedulers that describe the schedule's shape rather than the position in it.
_SHAPE_KEYS = ("step_size", "total_steps", "_schedule_phases")


def paper_decay_step(steps: int) -> int:
    """The first step of the paper's schedule that runs at the lowered rate (x0.1), for a run of ``steps``."""
    return max(1, int(LR_DECAY_AT * steps))


def paper_step_decay(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.StepLR:
    """The paper's schedule: constant, then x0.1 for the last 5 % of ``steps``."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=paper_decay_step(steps), gamma=0.1)


def check_warmup_fraction(warmup_fraction: float) -> None:
    """Refuse a warm-up share outside (0, 1), naming the parameter."""
    if not 0 < warmup_fraction < 1:
        msg = f"warmup_fraction must lie between 0 and 1 (a share of the steps), got {warmup_fraction}."
        raise ValueError(msg)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int,
              warmup_fraction: float = 0.05) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle over ``steps``: linear warm-up from lr/25 to ``lr``, cosine decay to lr/2500.

    A CPU affords a few thousand steps, not the paper's tens of thousands: a higher peak rate that decays gets
    further in them. Adam's betas stay fixed (no momentum cycling).
    """
    check_warmup_fraction(warmup_fraction)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup_fraction,
                                               cycle_momentum=False, anneal_strategy="cos", div_factor=25.0,
                                               final_div_factor=100.0)


def keep_position_only(scheduler_states: Iterable[dict[str, Any]]) -> None:
    """Drop the shape from saved scheduler states, so that loading them restores only the position (the step)."""
    for state in scheduler_states:
        for key in _SHAPE_KEYS:
            state.pop(key, None)
