"""Exported models (OpenVINO FP32/FP16/INT8, ONNX) reproduce the torch model on real PCB images.

Differences are compared in the units of the raw anomaly map, i.e. multiplied back by the post-processor's
normalisation range: the exported scores are min-max normalised, and after two training steps the range of the
normal scores is narrow, which would magnify any difference. OpenVINO runs with ``INFERENCE_PRECISION_HINT`` f32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch, MVTecAD
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from PIL import Image

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.inference import OpenVinoDetector
from efficientad_plugin.model_info import model_info
from efficientad_plugin.quantization import quantize_openvino

pytestmark = pytest.mark.slow
INPUT_SIZES = ((280, 300), (180, 200))  # (height, width) of the images fed in: both differ from the model's
TorchOutputs = list[tuple[tuple[int, int], np.ndarray, InferenceBatch]]  # input size, image, torch output
# Largest difference allowed, as a fraction of the normal range of the raw map (pixel_max - pixel_min).
TOLERANCES = {"openvino_fp32": 1e-4, "onnx": 1e-4, "openvino_fp16": 5e-3}


@pytest.fixture(scope="module", params=[(256, 256), (256, 320)], ids=["square", "rectangular"])
def exported(request: pytest.FixtureRequest, pcb_subset: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientAdPlugin, dict[str, Path]]:
    """A model trained for two steps on real PCB images at ``image_size``, and its exports."""
    root = tmp_path_factory.mktemp("export")
    datamodule = MVTecAD(root=pcb_subset, category="pcb", train_batch_size=1, eval_batch_size=4, num_workers=0,
                         val_split_mode="from_train", val_split_ratio=0.25, seed=0)
    model = EfficientAdPlugin(teacher_weights="LITE0_NATURAL2K_V1", image_size=request.param, max_steps=2)
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    model.eval()
    exports = {
        "openvino_fp32": engine.export(model, ExportType.OPENVINO, export_root=root / "fp32"),
        "openvino_fp16": engine.export(model, ExportType.OPENVINO, export_root=root / "fp16",
                                       compression_type=CompressionType.FP16),
        "onnx": engine.export(model, ExportType.ONNX, export_root=root / "onnx"),
    }
    return model, exports


def _test_images(pcb_subset: Path, size: tuple[int, int]) -> list[np.ndarray]:
    height, width = size
    return [np.asarray(Image.open(path).convert("RGB").resize((width, height)), dtype=np.float32) / 255
            for path in sorted((pcb_subset / "pcb" / "test").rglob("*.png"))]


@pytest.fixture(scope="module")
def torch_outputs(exported: tuple[EfficientAdPlugin, dict[str, Path]], pcb_subset: Path) -> TorchOutputs:
    """(input size, image, the torch model's output) for every test image at every input size, computed once."""
    model, _ = exported
    outputs = []
    for size in INPUT_SIZES:
        for image in _test_images(pcb_subset, size):
            with torch.no_grad():
                outputs.append((size, image, model(torch.from_numpy(image).permute(2, 0, 1)[None])))
    return outputs


@pytest.mark.parametrize("export", sorted(TOLERANCES))
def test_export_matches_torch(exported: tuple[EfficientAdPlugin, dict[str, Path]], torch_outputs: TorchOutputs,
                              export: str) -> None:
    model, exports = exported
    detector = OpenVinoDetector(exports[export], precision="f32")
    post = model.post_processor
    pixel_range, image_range = float(post.pixel_max - post.pixel_min), float(post.image_max - post.image_min)
    tolerance = TOLERANCES[export] * pixel_range
    for size, image, expected in torch_outputs:
        result = detector.predict(image)
        assert result.anomaly_map.shape == tuple(model.image_size)
        map_error = np.abs(result.anomaly_map - expected.anomaly_map[0, 0].numpy()).max() * pixel_range
        score_error = abs(result.score - expected.pred_score.item()) * image_range
        assert map_error <= tolerance, (size, map_error / pixel_range)
        assert score_error <= tolerance, (size, score_error / pixel_range)
        # Labels agree unless the score is within the tolerance of the threshold (0.5 after normalisation).
        if abs(expected.pred_score.item() - 0.5) * image_range > tolerance:
            assert result.label == bool(expected.pred_label.item())


def test_int8_quantisation_keeps_resize_and_normalisation(exported: tuple[EfficientAdPlugin, dict[str, Path]],
                                                           pcb_subset: Path, tmp_path: Path) -> None:
    """NNCF quantises the convolutions; the resize and the normalisations stay in the graph, in float."""
    import openvino as ov

    model, exports = exported
    int8 = quantize_openvino(exports["openvino_fp32"], pcb_subset / "pcb" / "train" / "good",
                             tmp_path / "int8" / "model.xml", subset_size=4)
    ops = [op.get_type_name() for op in ov.Core().read_model(str(int8)).get_ordered_ops()]
    assert ops.count("FakeQuantize") >= 22  # one per convolution input at least (22 convolutions in EfficientAD-S)
    assert "Interpolate" in ops
    assert "Clamp" in ops  # the post-processor's normalisation
    detector = OpenVinoDetector(int8, precision="f32")
    fp32 = OpenVinoDetector(exports["openvino_fp32"], precision="f32")
    differences = []
    for image in _test_images(pcb_subset, INPUT_SIZES[0]):
        result = detector.predict(image)
        assert 0.0 <= result.score <= 1.0
        assert result.anomaly_map.shape == tuple(model.image_size)
        differences.append(np.abs(result.anomaly_map - fp32.predict(image).anomaly_map).max())
    assert max(differences) > 0  # it really is another model
    assert model_info(int8) == model_info(exports["openvino_fp32"])  # Model API reads the INT8 IR too


def test_openvino_model_api_runs_the_ir_unchanged(exported: tuple[EfficientAdPlugin, dict[str, Path]],
                                                  pcb_subset: Path) -> None:
    """``Model.create_model(model.xml)`` gives Model API's anomaly wrapper, whose results equal OpenVinoDetector's.

    Images go in at the model's size, so Model API's resize of the outputs to the input size is the identity; it
    holds the map as uint8 (round(255 * map)), so the map is compared after the same rounding.
    """
    import openvino as ov
    from model_api.adapters import OpenvinoAdapter
    from model_api.models import AnomalyDetection, Model

    model, exports = exported
    xml = exports["openvino_fp32"]
    assert model_info(xml)["model_type"] == "AnomalyDetection"
    assert model_info(xml)["image_size"] == " ".join(map(str, model.image_size))
    adapter = OpenvinoAdapter(ov.Core(), str(xml), device="CPU", plugin_config={"INFERENCE_PRECISION_HINT": "f32"})
    wrapper = Model.create_model(adapter)
    assert isinstance(wrapper, AnomalyDetection)
    detector = OpenVinoDetector(xml, precision="f32")
    images = _test_images(pcb_subset, tuple(model.image_size))
    assert len(images) == 8
    labels = set()
    for image in images:
        expected = detector.predict(image)
        result = wrapper(np.round(image * 255).astype(np.uint8))  # Model API takes 8-bit images
        assert abs(result.pred_score - expected.score) <= 1e-3
        assert result.pred_label == str(expected.label)
        labels.add(result.pred_label)
        assert result.anomaly_map.shape == tuple(model.image_size)
        rounded = np.round(np.clip(expected.anomaly_map, 0, 1) * 255)
        assert np.abs(result.anomaly_map.astype(np.float64) - rounded).max() <= 1  # a rounding boundary at most
        assert np.array_equal(result.pred_mask.astype(bool), expected.anomaly_map > 0.5)  # anomalib: > threshold


def test_branch_weights_are_part_of_the_exported_graph(trained_checkpoint: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """A model whose weights give the local map everything exports that map, not the paper's average."""
    category, checkpoint = trained_checkpoint
    model = EfficientAdPlugin.load_from_checkpoint(checkpoint).eval()
    image = np.asarray(Image.open(next((category / "test").rglob("*.png"))).convert("RGB"), dtype=np.float32) / 255
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        model.model.anomaly_map_generator.set_branch_weights(0.5, 0.5)
        paper = model(pixels).anomaly_map[0, 0].numpy()
        model.model.anomaly_map_generator.set_branch_weights(1.0, 0.0)
        local = model(pixels).anomaly_map[0, 0].numpy()
    assert np.abs(local - paper).max() > 1e-3  # the weights change the map
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    xml = engine.export(model, ExportType.OPENVINO, export_root=tmp_path / "local")
    exported = OpenVinoDetector(xml, precision="f32").predict(image).anomaly_map
    assert np.abs(exported - local).max() <= 1e-3  # normalised map units; the paper's average is further off
    assert np.abs(exported - paper).max() > 1e-3


def test_map_smoothing_is_part_of_the_exported_graph_and_leaves_the_score(trained_checkpoint: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    """A sigma given to a trained model smooths its map in torch and in OpenVINO; the score stays the paper's."""
    category, checkpoint = trained_checkpoint
    plain = EfficientAdPlugin.load_from_checkpoint(checkpoint).eval()
    smoothing = EfficientAdPlugin.load_from_checkpoint(checkpoint, map_smoothing_sigma=4.0).eval()
    image = np.asarray(Image.open(next((category / "test").rglob("*.png"))).convert("RGB"), dtype=np.float32) / 255
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        unsmoothed, smoothed = plain(pixels), smoothing(pixels)
    assert torch.equal(smoothed.pred_score, unsmoothed.pred_score)
    assert float((smoothed.anomaly_map - unsmoothed.anomaly_map).abs().max()) > 1e-3
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    xml = engine.export(smoothing, ExportType.OPENVINO, export_root=tmp_path / "smoothing")
    exported = OpenVinoDetector(xml, precision="f32").predict(image)
    assert np.abs(exported.anomaly_map - smoothed.anomaly_map[0, 0].numpy()).max() <= 1e-3
    assert abs(exported.score - smoothed.pred_score.item()) <= 1e-3
