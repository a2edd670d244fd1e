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


BENCHMARK_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("config", BENCHMARK_CONFIGS, ids=[config.stem for config in BENCHMARK_CONFIGS])
def test_benchmark_config_arguments_exist_and_validation_is_held_out(config: Path) -> None:
    """Every model entry's arguments are arguments of that model (building them needs backbone weights)."""
    import inspect

    import yaml
    from anomalib.models import get_model

    section = yaml.safe_load(config.read_text())["benchmark"]
    entries = section["model"]["grid"]
    assert {entry["class_path"] for entry in entries} >= {"Patchcore", "EfficientAdPlugin"}
    for entry in entries:
        model_class = type(get_model(entry["class_path"], **({"pre_trained": False}
                                                              if entry["class_path"] == "Patchcore" else {})))
        unknown = set(entry.get("init_args", {})) - set(inspect.signature(model_class).parameters)
        assert not unknown, (entry["class_path"], unknown)
    data = section["data"]["init_args"]
    assert data["val_split_mode"] == "from_train"
    assert data["train_batch_size"] == 1


CONVERGENCE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "convergence").glob("*.yaml"))


@pytest.mark.parametrize("config", CONVERGENCE_CONFIGS, ids=[config.stem for config in CONVERGENCE_CONFIGS])
def test_convergence_configs_parse_for_their_subcommand_with_held_out_validation(config: Path) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from efficientad_plugin.cli import convergence

    function = convergence.reference if "patchcore" in config.stem else convergence.run
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(function)
    parser.add_argument("--config", action=ActionConfigFile)
    parsed = parser.parse_args(["--config", str(config)])
    assert parsed.data.init_args.val_split_mode == "from_train"
    if function is convergence.run:
        assert parsed.steps == sorted(parsed.steps) and parsed.steps[0] >= 100
        model = parser.instantiate_classes(parsed).model  # builds the plugin with the config's arguments
        assert type(model).__name__ == "EfficientAdPlugin"
