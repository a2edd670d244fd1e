"""tools/probe_features.py: a nearest-neighbour probe of teacher features finds generated defects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def test_probe_finds_generated_defects_with_an_untrained_pdn(synthetic_root: Path, teacher_file: Path,
                                                             load_tool: Callable) -> None:
    arguments = [str(synthetic_root / "synthetic"), "--features", "untrained", str(teacher_file),
                 "--bank-patches", "5000"]
    results = load_tool("probe_features").main(arguments)
    for name in ("untrained", str(teacher_file)):
        # generated defects are blobs and scratches on a regular texture: even random features see them
        assert results[name]["pixel_AUROC"] > 0.8, results[name]
        assert 0.0 <= results[name]["image_AUROC"] <= 1.0


def test_unknown_features_are_refused(synthetic_root: Path, load_tool: Callable) -> None:
    with pytest.raises((ValueError, FileNotFoundError)):
        load_tool("probe_features").main([str(synthetic_root / "synthetic"), "--features", "no_such_teacher"])
