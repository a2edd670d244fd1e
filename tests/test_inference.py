"""Tests for efficientad_plugin.inference and tools/infer.py on a real (untrained but fitted) OpenVINO export."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image

from efficientad_plugin import EfficientAdPlugin
from efficientad_plugin.inference import OpenVinoDetector, expand_inputs, write_overlay

REPO_ROOT = Path(__file__).resolve().parents[1]
GOOD = ("a_rgb.png", "b_photo.jpg", "c_gray.png", "d_rgba.png", "e_16bit.png")
BROKEN = ("f_empty.png", "g_truncated.png", "h_text.jpg")


def _pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour pattern with noise, uint8 ``[H, W, 3]``: unlike pure noise, it survives JPEG."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images in five modes and formats, and three broken files, named so that sorting keeps this order."""
    folder = tmp_path_factory.mktemp("line")
    rng = np.random.default_rng(0)
    Image.fromarray(_pattern(rng, 280, 300)).save(folder / "a_rgb.png")
    Image.fromarray(_pattern(rng, 240, 320)).save(folder / "b_photo.jpg", quality=90)
    Image.fromarray(_pattern(rng, 256, 256)[..., 0]).save(folder / "c_gray.png")
    rgba = np.dstack([_pattern(rng, 200, 260), np.full((200, 260), 200, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "d_rgba.png")
    Image.fromarray(_pattern(rng, 270, 270)[..., 1].astype(np.uint16) * 257).save(folder / "e_16bit.png")
    (folder / "f_empty.png").write_bytes(b"")
    complete = (folder / "a_rgb.png").read_bytes()
    (folder / "g_truncated.png").write_bytes(complete[: len(complete) // 2])
    (folder / "h_text.jpg").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientAdPlugin, Path]:
    """An untrained EfficientAdPlugin given fitted statistics and thresholds without training, and its IR."""
    torch.manual_seed(0)
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None).eval()
    model.model.teacher_mean.zero_()
    model.model.teacher_std.fill_(1.0)
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(_pattern(rng, size, size)).permute(2, 0, 1).float().div(255)[None]
              for size in (256, 300, 280, 320)]
    with torch.no_grad():
        # Quantiles fitted on the model's own maps: on random maps (values ~0.5) every score would be 0.
        model.model.anomaly_map_generator.fit(*model.model.raw_maps(images[0]))
        # The post-processor's buffers are NaN, so this forward pass returns raw scores and maps.
        raw = [model(image) for image in images]
    scores = torch.cat([result.pred_score for result in raw])
    maps = torch.cat([result.anomaly_map for result in raw])
    post_processor = model.post_processor
    for values, low, high, threshold in ((scores, post_processor.image_min, post_processor.image_max,
                                          post_processor._image_threshold),
                                         (maps, post_processor.pixel_min, post_processor.pixel_max,
                                          post_processor._pixel_threshold)):
        # Widened so that other images of the same kind score strictly inside (0, 1).
        spread = float(values.max() - values.min())
        low.fill_(float(values.min()) - spread)
        high.fill_(float(values.max()) + spread)
        threshold.fill_(float(values.mean()))
    xml = model.to_openvino(export_root=tmp_path_factory.mktemp("export"), model_file_name="model")
    return model, xml


@pytest.fixture(scope="module")
def detector(exported: tuple[EfficientAdPlugin, Path]) -> OpenVinoDetector:
    return OpenVinoDetector(exported[1])


def test_predict_matches_torch_at_f32(exported: tuple[EfficientAdPlugin, Path], detector: OpenVinoDetector) -> None:
    """With the f32 precision hint, the IR's score, label and map match the torch model on a 300x280 image."""
    model, _ = exported
    image = _pattern(np.random.default_rng(2), 280, 300).astype(np.float32) / 255
    prediction = detector.predict(image)
    with torch.no_grad():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert {"pred_score", "pred_label", "anomaly_map"} <= set(detector.output_names)
    assert 0.0 < prediction.score < 1.0  # not clamped: the comparison means something
    assert prediction.score == pytest.approx(expected.pred_score.item(), abs=1e-3)
    assert prediction.label == bool(expected.pred_label.item())
    assert prediction.anomaly_map.shape == (256, 256)
    np.testing.assert_allclose(prediction.anomaly_map, expected.anomaly_map[0, 0].numpy(), atol=2e-3)
    assert prediction.error is None and prediction.seconds > 0


def test_predict_rejects_wrong_layout_and_dtype(detector: OpenVinoDetector) -> None:
    with pytest.raises(ValueError, match="H, W, 3"):
        detector.predict(np.zeros((3, 32, 32), dtype=np.float32))
    with pytest.raises(TypeError, match="255"):
        detector.predict(np.zeros((32, 32, 3), dtype=np.uint8))


def test_detector_rejects_bad_arguments(exported: tuple[EfficientAdPlugin, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.xml"):
        OpenVinoDetector(tmp_path / "missing.xml")
    with pytest.raises(ValueError, match="precision"):
        OpenVinoDetector(exported[1], precision="fp32")
    with pytest.raises(ValueError, match="mode"):
        OpenVinoDetector(exported[1], mode="fast")


def test_predict_files_keeps_order_and_reports_broken_files(exported: tuple[EfficientAdPlugin, Path],
                                                            detector: OpenVinoDetector, folder: Path) -> None:
    """Latency and throughput modes: one result per file in input order, errors only for the broken files."""
    paths = expand_inputs([str(folder)])
    assert [path.name for path in paths] == sorted(GOOD + BROKEN)
    results = {}
    for mode, current in (("latency", detector), ("throughput", OpenVinoDetector(exported[1], mode="throughput"))):
        reported = []
        predictions = current.predict_files(paths, on_result=reported.append, keep_maps=True)
        assert [prediction.path for prediction in predictions] == [str(path) for path in paths]
        assert len(reported) == len(paths) and {id(item) for item in reported} == {id(item) for item in predictions}
        for path, prediction in zip(paths, predictions, strict=True):
            if path.name in BROKEN:
                assert path.name in prediction.error
                assert prediction.score is None and prediction.label is None and prediction.anomaly_map is None
            else:
                assert prediction.error is None, prediction.error
                assert 0.0 <= prediction.score <= 1.0
                assert prediction.label == (prediction.score > 0.5)
                assert prediction.anomaly_map.shape == (256, 256)
                assert prediction.seconds > 0
        results[mode] = predictions
    for latency, throughput in zip(results["latency"], results["throughput"], strict=True):
        assert (throughput.error is None) == (latency.error is None)
        assert throughput.score == pytest.approx(latency.score, abs=1e-6)
    assert all(prediction.anomaly_map is None for prediction in detector.predict_files(paths[:1]))


def test_inference_errors_stay_with_their_image(tmp_path: Path) -> None:
    """An image that fails inside OpenVINO (not when read) gets its error in both modes; the others are scored.

    A tiny IR whose reshape needs the image height to be a multiple of 7 fails while running, which poisons an
    AsyncInferQueue: throughput mode must recover and still attribute the error to the right image.
    """
    from openvino import opset13 as ops

    image = ops.parameter([-1, 3, -1, -1], np.float32, name="input")
    reshaped = ops.reshape(image, ops.constant(np.array([0, -1, 7])), special_zero=True)
    score = ops.unsqueeze(ops.reduce_mean(reshaped, ops.constant(np.array([1, 2])), keep_dims=False),
                          ops.constant(np.array([1])))
    score.output(0).get_tensor().set_names({"pred_score"})
    ov.save_model(ov.Model([score], [image]), tmp_path / "picky.xml")
    paths = []
    for index, height in enumerate((7, 5, 14, 7, 6, 21, 7)):
        paths.append(tmp_path / f"{index}_{height}.png")
        Image.new("RGB", (4, height), (255, 255, 255)).save(paths[-1])
    for mode in ("latency", "throughput"):
        reported = []
        predictions = OpenVinoDetector(tmp_path / "picky.xml", mode=mode).predict_files(paths, reported.append)
        assert [prediction.path for prediction in predictions] == [str(path) for path in paths]
        assert len(reported) == len(paths)
        for path, prediction in zip(paths, predictions, strict=True):
            if int(path.stem.split("_")[1]) % 7:
                assert path.name in prediction.error and "\n" not in prediction.error and prediction.score is None
            else:
                assert prediction.error is None and prediction.score == pytest.approx(1.0)


def test_expand_inputs(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    for name in ("nested/deeper/z.png", "nested/y.JPG", "a.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="JPEG" if name.endswith("JPG") else "PNG")
    (tmp_path / "nested" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    single = folder / "a_rgb.png"
    assert expand_inputs([str(single)]) == [single]
    assert expand_inputs([str(tmp_path / "nested")]) == [tmp_path / "nested/deeper/z.png", tmp_path / "nested/y.JPG"]
    assert expand_inputs([str(tmp_path / "**" / "*.png")]) == [tmp_path / "a.png", tmp_path / "nested/deeper/z.png"]
    # glob matches are filtered to images like folder contents; duplicates keep their first position
    assert expand_inputs([str(tmp_path / "nested" / "*"), str(tmp_path / "a.png"), str(tmp_path / "nested" / "y.JPG"),
                          str(tmp_path / "nested" / ".." / "a.png")]) == [
        tmp_path / "nested/deeper/z.png", tmp_path / "nested/y.JPG", tmp_path / "a.png"]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        expand_inputs([str(single), str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="nothing"):
        expand_inputs([str(tmp_path / "nothing*.bmp")])
    with pytest.raises(FileNotFoundError, match="empty"):
        expand_inputs([str(tmp_path / "empty")])


def test_write_overlay(folder: Path, tmp_path: Path) -> None:
    anomaly_map = np.zeros((64, 64), dtype=np.float32)
    anomaly_map[:, 32:] = 1.0
    destination = write_overlay(folder / "d_rgba.png", anomaly_map, tmp_path / "sub" / "overlay.png")
    overlay = np.asarray(Image.open(destination))
    assert overlay.shape == (200, 260, 3)
    # jet: low values blue, high values red
    assert overlay[100, 10, 2] > overlay[100, 10, 0] and overlay[100, 250, 0] > overlay[100, 250, 2]


def _start_infer(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "tools" / "infer.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)


def test_infer_tool_writes_rows_and_exits_1_only_on_failures(exported: tuple[EfficientAdPlugin, Path], folder: Path,
                                                              tmp_path: Path) -> None:
    """As a subprocess: the mixed folder gives a CSV row per file, overlays of the good ones and status 1;
    the good files alone give JSON and status 0. Both run at once: most of their time is importing torch."""
    csv_output, overlays, json_output = tmp_path / "out" / "results.csv", tmp_path / "overlays", tmp_path / "r.json"
    mixed = _start_infer(exported[1], folder, "--output", csv_output, "--overlays", overlays, "--mode", "throughput")
    good = _start_infer(exported[1], *(folder / name for name in GOOD), "--output", json_output,
                        "--precision", "default")
    (mixed_out, mixed_err), (_, good_err) = mixed.communicate(timeout=300), good.communicate(timeout=300)

    assert mixed.returncode == 1, mixed_err
    assert "8 images, 3 failed" in mixed_out
    with csv_output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [Path(row["path"]).name for row in rows] == sorted(GOOD + BROKEN)
    assert [Path(row["path"]).name for row in rows if row["error"]] == list(BROKEN)
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows if not row["error"])
    assert sorted(path.name for path in overlays.rglob("*.png")) == sorted(
        f"{Path(name).stem}_{Path(name).suffix[1:]}.png" for name in GOOD)

    assert good.returncode == 0, good_err
    rows = json.loads(json_output.read_text())
    assert [Path(row["path"]).name for row in rows] == list(GOOD)
    assert all(row["error"] is None and isinstance(row["label"], bool) and 0 <= row["score"] <= 1 for row in rows)


def test_infer_tool_help_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In process (a subprocess costs seconds of imports): --help, a bad output suffix and unmatched inputs.

    Both errors come before the model is opened, so it need not exist.
    """
    spec = importlib.util.spec_from_file_location("infer_tool", REPO_ROOT / "tools" / "infer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = str(tmp_path / "model.xml")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0 and "--overlays" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        tool.main([model, str(tmp_path), "--output", str(tmp_path / "results.txt")])
    assert exit_info.value.code == 2
    assert tool.main([model, str(tmp_path / "missing*.png"), "--output", str(tmp_path / "results.csv")]) == 2
    assert "missing*.png" in capsys.readouterr().err
