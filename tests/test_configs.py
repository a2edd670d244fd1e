"""The shipped configs parse with anomalib's CLI and build the paper's setup."""

from __future__ import annotations

from pathlib import Path

import pytest
from anomalib.cli import AnomalibCLI

from efficientad_plugin import EfficientAdPlugin

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[config.stem for config in CONFIGS])
def test_config_builds_plugin_with_held_out_validation(config: Path) -> None:
    cli = AnomalibCLI(["fit", "--config", str(config)], run=False)
    model, datamodule = cli.model, cli.datamodule
    assert isinstance(model, EfficientAdPlugin)
    assert model.trainer_arguments["max_steps"] == model.max_steps
    assert datamodule.train_batch_size == 1
    assert str(datamodule.val_split_mode).endswith(("from_train", "FROM_TRAIN"))
