"""Learning-rate schedules: the paper's step decay, one-cycle, and resuming into a schedule of another length."""

from __future__ import annotations

import pytest
import torch

from efficientad_plugin.schedules import keep_position_only, one_cycle, paper_step_decay


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _rates(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_paper_schedule_drops_tenfold_at_95_percent() -> None:
    optimizer = _optimizer(1e-4)
    rates = _rates(optimizer, paper_step_decay(optimizer, 100), 100)
    assert rates[:95] == [pytest.approx(1e-4)] * 95
    assert rates[95:] == [pytest.approx(1e-5)] * 5


def test_one_cycle_warms_up_to_the_peak_then_decays_by_cosine_to_lr_over_2500() -> None:
    optimizer = _optimizer(1e-3)
    rates = _rates(optimizer, one_cycle(optimizer, 1e-3, 200, warmup_fraction=0.05), 200)
    assert rates[0] == pytest.approx(1e-3 / 25)
    assert max(rates) == pytest.approx(1e-3) and rates.index(max(rates)) == 9  # 5 % of 200 steps, from 0
    assert all(later < earlier for earlier, later in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] == pytest.approx(1e-3 / 2500, rel=1e-3)
    assert rates[9 + 95] == pytest.approx((1e-3 + 1e-3 / 2500) / 2, rel=0.02)  # cosine: halfway down at mid-decay


@pytest.mark.parametrize("schedule", ["paper", "one_cycle"])
def test_a_resumed_schedule_keeps_its_position_and_takes_the_new_length(schedule: str) -> None:
    def build(steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = _optimizer(1e-3)
        scheduler = paper_step_decay(optimizer, steps) if schedule == "paper" else one_cycle(optimizer, 1e-3, steps)
        return optimizer, scheduler

    short_optimizer, short = build(40)
    _rates(short_optimizer, short, 10)
    state = short.state_dict()
    keep_position_only([state])
    optimizer, scheduler = build(100)
    optimizer.load_state_dict(short_optimizer.state_dict())
    scheduler.load_state_dict(state)
    reference_optimizer, reference = build(100)
    expected = _rates(reference_optimizer, reference, 100)[10:]
    resumed = _rates(optimizer, scheduler, 90)
    assert resumed[0] == short_optimizer.param_groups[0]["lr"]  # the first step runs at the rate it was saved with
    assert resumed[1:] == pytest.approx(expected[1:], rel=1e-6)
    if schedule == "paper":
        assert expected[:85] == [pytest.approx(1e-3)] * 85  # the 40-step run would have dropped at step 38


def test_warmup_fraction_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_fraction"):
        one_cycle(_optimizer(1e-3), 1e-3, 100, warmup_fraction=1.5)
