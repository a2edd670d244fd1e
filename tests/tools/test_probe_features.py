"""tools/probe_features.py: a nearest-neighbour probe of teacher features finds generated defects."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tool() -> object:
    spec = importlib.util.spec_from_file_location("probe_tool", REPO_ROOT / "tools" / "probe_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_finds_generated_defects_with_an_untrained_pdn(synthetic_root: Path, teacher_file: Path) -> None:
    results = _tool().main([str(synthetic_root / "synthetic"), "--features", "untrained", str(teacher_file)])
    for name in ("untrained", str(teacher_file)):
        # generated defects are blobs and scratches on a regular texture: even random features see them
        assert results[name]["pixel_AUROC"] > 0.8, results[name]
        assert 0.0 <= results[name]["image_AUROC"] <= 1.0


def test_unknown_features_are_refused(synthetic_root: Path) -> None:
    with pytest.raises((ValueError, FileNotFoundError)):
        _tool().main([str(synthetic_root / "synthetic"), "--features", "no_such_teacher"])
