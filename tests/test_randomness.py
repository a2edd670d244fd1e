from __future__ import annotations

import torch

from efficientad_plugin.randomness import AUGMENTATION_STREAM, PENALTY_STREAM, step_generator


def _draw(seed: int, step: int, stream: int) -> torch.Tensor:
    return torch.rand(8, generator=step_generator(seed, step, stream))


def test_same_seed_step_and_stream_draw_the_same_whatever_the_global_rng() -> None:
    torch.manual_seed(0)
    first = _draw(42, 1000, PENALTY_STREAM)
    torch.manual_seed(1)
    torch.rand(100)
    assert torch.equal(_draw(42, 1000, PENALTY_STREAM), first)


def test_streams_steps_and_seeds_are_independent() -> None:
    draws = [_draw(seed, step, stream) for seed in (0, 1) for step in (0, 1, 2) for stream in
             (PENALTY_STREAM, AUGMENTATION_STREAM)]
    assert len({tuple(draw.tolist()) for draw in draws}) == len(draws)
