"""Native-resolution mode end to end: crops in training, maps at the image's own size, OpenVINO at any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.data import generate_mvtec_dataset
from efficientad_plugin.inference import OpenVinoDetector
from efficientad_plugin.model_info import model_info

pytestmark = pytest.mark.slow
SIZE = (288, 320)  # the dataset's images: larger than image_size (256), so the crops are real crops
INPUT_SIZES = ((288, 320), (301, 277))  # the second not a multiple of 4 on either side


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientAdPlugin, Engine, MVTecAD, Path]:
    """A native-mode model trained for two steps on 288x320 images, and its OpenVINO FP32 export."""
    root = tmp_path_factory.mktemp("native")
    generate_mvtec_dataset(root / "data", image_size=SIZE, num_train=8, num_test_good=2, num_test_defect=2)
    datamodule = MVTecAD(root=root / "data", category="synthetic", train_batch_size=1, eval_batch_size=2,
                         num_workers=0, val_split_mode="from_train", val_split_ratio=0.25, seed=0)
    model = EfficientAdPlugin(teacher_weights="untrained", max_steps=2, local_size="native")
    engine = Engine(default_root_dir=root / "run", logger=False, enable_progress_bar=False, devices=1)
    engine.fit(model, datamodule=datamodule)
    model.eval()
    xml = engine.export(model, ExportType.OPENVINO, export_root=root / "export")
    return model, engine, datamodule, xml


def test_native_mode_scores_at_the_images_size_and_exports_at_any_size(
        native: tuple[EfficientAdPlugin, Engine, MVTecAD, Path]) -> None:
    model, engine, datamodule, xml = native
    assert model.teacher_cache is None  # crops differ at every step: nothing to cache
    metrics = engine.test(model, datamodule)[0]
    assert {"image_AUROC", "local_pixel_AUPRO", "global_image_AUROC"} <= set(metrics)
    assert model_info(xml)["local_size"] == "native"
    detector = OpenVinoDetector(xml, precision="f32")
    post = model.post_processor
    pixel_range = float(post.pixel_max - post.pixel_min)
    rng = np.random.default_rng(0)
    for size in INPUT_SIZES:
        image = rng.random((*size, 3), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(image).permute(2, 0, 1)[None])
        assert tuple(expected.anomaly_map.shape[-2:]) == size  # the map comes at the input's size
        result = detector.predict(image)
        assert result.anomaly_map.shape == size
        error = np.abs(result.anomaly_map - expected.anomaly_map[0, 0].numpy()).max() * pixel_range
        assert error <= 1e-4 * pixel_range, (size, error)
        assert abs(result.score - expected.pred_score.item()) <= 1e-4


def test_smoothed_native_maps_export_at_any_size(native: tuple[EfficientAdPlugin, Engine, MVTecAD, Path],
                                                tmp_path: Path) -> None:
    """The map smoothing's reflect padding follows the input's size in the dynamic-size graph too."""
    model, engine, _, _ = native
    smoothing = EfficientAdPlugin(teacher_weights="untrained", local_size="native", map_smoothing_sigma=4.0)
    smoothing.load_state_dict(model.state_dict())  # the trained model, its quantiles and post-processor's ranges
    smoothing.eval()
    detector = OpenVinoDetector(engine.export(smoothing, ExportType.OPENVINO, export_root=tmp_path), precision="f32")
    pixel_range = float(smoothing.post_processor.pixel_max - smoothing.post_processor.pixel_min)
    rng = np.random.default_rng(1)
    for size in INPUT_SIZES:
        image = rng.random((*size, 3), dtype=np.float32)
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected, unsmoothed = smoothing(pixels), model(pixels)
        assert expected.pred_score.item() == unsmoothed.pred_score.item()
        assert float((expected.anomaly_map - unsmoothed.anomaly_map).abs().max()) > 1e-3
        result = detector.predict(image)
        assert result.anomaly_map.shape == size
        error = np.abs(result.anomaly_map - expected.anomaly_map[0, 0].numpy()).max() * pixel_range
        assert error <= 1e-4 * pixel_range, (size, error)
        assert abs(result.score - expected.pred_score.item()) <= 1e-4


def test_an_image_over_the_memory_budget_is_refused_by_name(
        native: tuple[EfficientAdPlugin, Engine, MVTecAD, Path]) -> None:
    model, engine, datamodule, _ = native
    model.max_image_megapixels = 0.1  # each test batch holds 2 x 0.092 megapixels
    try:
        with pytest.raises(ValueError, match=r"synthetic.*288x320 px = 0\.2 megapixels, above max_image_megapixels"):
            engine.test(model, datamodule)
    finally:
        model.max_image_megapixels = 16.0


def test_images_of_mixed_sizes_train_and_test_through_anomalibs_cli_at_batch_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.cli import AnomalibCLI
    from PIL import Image

    root = generate_mvtec_dataset(tmp_path / "data", image_size=SIZE, num_train=6, num_test_good=2,
                                  num_test_defect=2).parent
    for path in [*sorted(root.rglob("*.png"))[::2]]:  # every other image and mask at another size
        with Image.open(path) as image:
            resized = image.resize((300, 270), Image.Resampling.NEAREST if "_mask" in path.name else
                                   Image.Resampling.BILINEAR)
        resized.save(path)
    masks = sorted((root / "synthetic" / "ground_truth").rglob("*_mask.png"))
    for mask in masks:  # a mask keeps its image's size
        image = root / "synthetic" / "test" / mask.parent.name / mask.name.replace("_mask", "")
        with Image.open(image) as source, Image.open(mask) as target:
            if source.size != target.size:
                target.resize(source.size, Image.Resampling.NEAREST).save(mask)
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: EfficientAdPlugin\n  init_args:\n    teacher_weights: untrained\n"
        "    max_steps: 1\n    local_size: native\n    penalty_dir: null\n"
        f"data:\n  class_path: MVTecAD\n  init_args: {{root: {root}, category: synthetic, "
        "val_split_mode: from_train, val_split_ratio: 0.34, train_batch_size: 1, eval_batch_size: EVAL, "
        "num_workers: 0}\n"
        "trainer: {logger: false, enable_progress_bar: false}\n")
    monkeypatch.chdir(tmp_path)  # anomalib's CLI writes ./results
    text = config.read_text()
    config.write_text(text.replace("EVAL", "2"))
    with pytest.raises(ValueError, match="differ in size.*eval_batch_size 1"):
        AnomalibCLI(["train", "--config", str(config)])
    config.write_text(text.replace("EVAL", "1"))
    AnomalibCLI(["train", "--config", str(config)])  # train, then test on both sizes
    [checkpoint] = sorted((tmp_path / "results").rglob("model.ckpt"))
    AnomalibCLI(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)])
    images = sorted((tmp_path / "results").rglob("images/**/*.png"))
    assert images  # the visualiser wrote the predictions of both sizes
