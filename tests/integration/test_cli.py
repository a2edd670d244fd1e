"""anomalib's own CLI drives EfficientAdPlugin through train, test, predict and export, in process and offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.cli import AnomalibCLI
from PIL import Image

from efficientad_plugin import EfficientAdPlugin

pytestmark = pytest.mark.slow
MAX_STEPS = 4  # mid-epoch: the training split holds 8 images


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, teacher_file: Path,
            penalty_folder: Path) -> tuple[Path, AnomalibCLI]:
    """Train with ``anomalib train --model EfficientAdPlugin`` (short name) and return the results dir and CLI."""
    results = tmp_path_factory.mktemp("results")
    cli = AnomalibCLI([
        "train",
        "--model", "EfficientAdPlugin",
        "--model.teacher_weights", str(teacher_file),
        "--model.penalty_dir", str(penalty_folder),
        "--model.max_steps", str(MAX_STEPS),
        "--data", "MVTecAD",
        "--data.root", str(synthetic_root),
        "--data.category", "synthetic",
        "--data.train_batch_size", "1",
        "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--data.val_split_mode", "from_train",
        "--data.val_split_ratio", "0.2",
        "--data.seed", "0",
        "--default_root_dir", str(results),
        "--trainer.logger", "false",
    ])
    return results, cli


def _checkpoint(results: Path) -> Path:
    return next(results.rglob("weights/lightning/model.ckpt"))


def test_train_runs_paper_schedule_and_fits_normalisation_mid_epoch(trained: tuple[Path, AnomalibCLI]) -> None:
    results, _ = trained
    checkpoint = torch.load(_checkpoint(results), map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == MAX_STEPS
    # StepLR stepped per optimizer step: it decayed at int(0.95 * 4) = 3 steps.
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == MAX_STEPS
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    state = checkpoint["state_dict"]
    for key in ("model.anomaly_map_generator.st_quantiles", "model.anomaly_map_generator.ae_quantiles",
                "model.teacher_mean", "model.teacher_std", "post_processor.image_min", "post_processor.image_max"):
        assert torch.isfinite(state[key]).all(), key
    assert (state["model.anomaly_map_generator.st_quantiles"].diff() > 0).all()


def test_train_tests_and_visualises(trained: tuple[Path, AnomalibCLI]) -> None:
    results, cli = trained
    metrics = cli.engine.trainer.callback_metrics
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"):
        assert 0.0 <= float(metrics[name]) <= 1.0
    assert len(list(results.rglob("images/**/*.png"))) == 8  # one per test image
    assert (next(results.rglob("config.yaml"))).read_text().count("efficientad_plugin.EfficientAdPlugin") == 1


def _predict(results: Path, folder: Path, output: Path, *arguments: str) -> list:
    cli = AnomalibCLI([
        "predict",
        "--model", "efficientad_plugin.EfficientAdPlugin",
        "--model.teacher_weights", "untrained",  # the checkpoint's teacher replaces it
        *arguments,
        "--data", str(folder),
        "--ckpt_path", str(_checkpoint(results)),
        "--default_root_dir", str(output),
        "--return_predictions", "true",
    ])
    return [item for batch in cli.engine.trainer.predict_loop.predictions for item in batch]


def test_predict_on_a_folder(trained: tuple[Path, AnomalibCLI], synthetic_root: Path, tmp_path: Path) -> None:
    results, _ = trained
    predictions = _predict(results, synthetic_root / "synthetic" / "test" / "defect", tmp_path)
    assert len(predictions) == 4
    for item in predictions:
        assert 0.0 <= float(item.pred_score) <= 1.0
        assert item.anomaly_map.shape[-2:] == (256, 256)
    assert len(list(tmp_path.rglob("*.png"))) == 4


def test_a_trained_model_takes_a_map_smoothing_sigma_on_the_command_line(
        trained: tuple[Path, AnomalibCLI], synthetic_root: Path, tmp_path: Path) -> None:
    results, _ = trained
    folder = synthetic_root / "synthetic" / "test" / "defect"
    plain = _predict(results, folder, tmp_path / "plain")
    smoothed = _predict(results, folder, tmp_path / "smoothed", "--model.map_smoothing_sigma", "4")

    def roughness(anomaly_map: torch.Tensor) -> float:  # mean absolute difference of neighbouring pixels
        return float(anomaly_map.diff(dim=-1).abs().mean() + anomaly_map.diff(dim=-2).abs().mean())

    for before, after in zip(plain, smoothed, strict=True):
        assert float(after.pred_score) == pytest.approx(float(before.pred_score), abs=1e-6)  # the score is unsmoothed
        assert roughness(after.anomaly_map) < 0.9 * roughness(before.anomaly_map)  # already smooth: 4x upsampled


def test_export_openvino_matches_torch(trained: tuple[Path, AnomalibCLI], synthetic_root: Path,
                                       tmp_path: Path) -> None:
    """OpenVINO IR (f32 precision hint) reproduces the torch model, resize and post-processing included."""
    from anomalib.deploy import OpenVINOInferencer

    results, _ = trained
    AnomalibCLI([
        "export",
        "--model", "EfficientAdPlugin",
        "--export_type", "openvino",
        "--ckpt_path", str(_checkpoint(results)),
        "--default_root_dir", str(tmp_path),
    ])
    xml = next(tmp_path.rglob("weights/openvino/model.xml"))
    inferencer = OpenVINOInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    model = EfficientAdPlugin.load_from_checkpoint(_checkpoint(results)).eval()
    for path in sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:4]:
        # a larger input than the model's: the resize must be inside both graphs
        image = np.asarray(Image.open(path).convert("RGB").resize((300, 280)), dtype=np.float32) / 255
        ov_result = inferencer.predict(image)
        with torch.no_grad():
            torch_result = model(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0))
        assert np.asarray(ov_result.pred_score).item() == pytest.approx(torch_result.pred_score.item(), abs=1e-3)
        assert np.asarray(ov_result.pred_label).item() == torch_result.pred_label.item()
        np.testing.assert_allclose(np.asarray(ov_result.anomaly_map).squeeze(),
                                   torch_result.anomaly_map.squeeze().numpy(), atol=2e-3)
