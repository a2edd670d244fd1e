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


def test_fast_preset_changes_only_the_schedule_and_precision_of_the_paper_recipe() -> None:
    """The preset's learning rate at given steps, and the paper's losses and networks at every step."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    paper = AnomalibCLI(["fit", "--config", str(configs / "efficientad_plugin.yaml")], run=False)
    fast = AnomalibCLI(["fit", "--config", str(configs / "efficientad_plugin_fast.yaml")], run=False)
    assert fast.config.fit.trainer.precision == "bf16-mixed"
    assert paper.config.fit.trainer.precision in (None, "32", "32-true")
    differing = {name for name, value in fast.model.hparams.items() if paper.model.hparams.get(name) != value}
    # same networks, losses and image size; offline (bundled teacher and penalty set) and the branch-weight rule
    assert differing == {"max_steps", "lr", "lr_schedule", "teacher_weights", "penalty_dir", "branch_weights"}
    assert fast.model.teacher_weights == "LITE0_NATURAL2K_V3" and fast.model.penalty_dir == "bundled"
    assert fast.model.branch_weights == "auto" and paper.model.branch_weights == "paper"
    model = fast.model
    configuration = model.configure_optimizers()
    optimizer, scheduler = configuration["optimizer"], configuration["lr_scheduler"]["scheduler"]
    assert configuration["lr_scheduler"]["interval"] == "step"
    rates = []
    for _ in range(model.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = model.lr
    assert model.max_steps == 2200 and peak == pytest.approx(1e-3)
    assert rates[0] == pytest.approx(peak / 25)  # warm-up from lr/25 ...
    assert rates[109] == pytest.approx(peak)  # ... to the peak at the end of the first 5 % (110 steps)
    assert rates[1154] == pytest.approx(peak / 2, rel=0.01)  # cosine: half the peak midway through the decay
    assert rates[-1] == pytest.approx(peak / 2500, rel=1e-3)
    assert model.trainer_arguments["max_steps"] == 2200 and model.trainer_arguments["val_check_interval"] == 2200
