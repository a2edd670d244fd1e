"""Anomaly detection with an exported OpenVINO model (``anomalib export --export_type openvino``), file by file.

The exported graph holds the resize, the map and score normalisation and the threshold, so images go in as
RGB in [0, 1] at any size and scores come out in [0, 1] with the threshold at 0.5.
"""

from __future__ import annotations

import contextlib
import glob
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image

from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_rgb

PRECISIONS = ("f32", "bf16", "f16")
AUTO = "auto"
MODES = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
OVERLAY_ALPHA = 0.45  # weight of the heat map over the image


@dataclass
class Prediction:
    """The result for one image; ``error`` is set (and score and label are ``None``) when it failed.

    ``seconds`` is the wall time of reading and scoring it (in throughput mode: reading, then submit to callback).
    ``anomaly_map`` is ``[h, w]`` at the model's size, normalised like ``score``, and kept only on request.
    """

    path: str
    score: float | None = None
    label: bool | None = None
    seconds: float = 0.0
    error: str | None = None
    anomaly_map: np.ndarray | None = None


def native_bf16(device: str = "CPU", core: ov.Core | None = None) -> bool:
    """Whether OpenVINO computes bf16 natively on ``device`` (its ``OPTIMIZATION_CAPABILITIES`` list BF16).

    On CPUs that is AVX512-BF16 or AMX; OpenVINO then runs bf16 by default, and elsewhere it would emulate it.
    """
    try:
        return "BF16" in (core or ov.Core()).get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # a device without the property (or not present)
        return False


def resolve_precision(precision: str | None, device: str = "CPU", core: ov.Core | None = None) -> str | None:
    """``"auto"`` becomes ``"bf16"`` where the device computes bf16 natively and ``"f32"`` elsewhere."""
    if precision != AUTO:
        return precision
    return "bf16" if native_bf16(device, core) else "f32"


class OpenVinoDetector:
    """An exported EfficientAdPlugin (OpenVINO ``.xml`` or ``.onnx``) compiled for one device.

    anomalib's ``OpenVINOInferencer`` runs one image at a time and fails on the first bad file; this adds what a
    line needs: files, folders and globs in one call, an unreadable image reported in its own result while the rest
    go on, an explicit precision hint (f32 by default), and an async throughput mode (``AsyncInferQueue``).

    Args:
        model: path to the ``.xml`` IR (its ``.bin`` beside it) or an ``.onnx`` file.
        device: OpenVINO device name (``"CPU"``, ``"GPU"``, ``"AUTO"``...).
        precision: ``INFERENCE_PRECISION_HINT``: ``"f32"``, ``"bf16"``, ``"f16"``, ``"auto"`` (bf16 where the device
            computes it natively, else f32; ``self.precision`` says which) or ``None`` for the device's default.
            The default is ``"f32"`` because, without this hint, OpenVINO's CPU plugin runs in bf16 on CPUs with bf16
            support (AMX, AVX512-BF16), which changes scores slightly and can flip the labels of images near the
            threshold; choose ``"auto"`` or ``"bf16"`` for speed deliberately, after ``precision_check`` on your
            normal images. CPUs without bf16 support run f32 whatever the hint.
        mode: ``"latency"`` (one image at a time, synchronously) or ``"throughput"`` (several images in flight
            with ``AsyncInferQueue``); sets ``PERFORMANCE_HINT``.

    Not thread-safe: use one detector per thread.
    """

    def __init__(
        self,
        model: str | Path,
        device: str = "CPU",
        precision: str | None = "f32",
        mode: str = "latency",
    ) -> None:
        model = Path(model).expanduser()
        if not model.is_file():
            msg = f"Model file {model} does not exist (expected an OpenVINO .xml or an .onnx file)."
            raise FileNotFoundError(msg)
        if precision is not None and precision not in (*PRECISIONS, AUTO):
            msg = f"precision must be one of {', '.join((*PRECISIONS, AUTO))} or None, got {precision!r}."
            raise ValueError(msg)
        if mode not in MODES:
            msg = f"mode must be one of {', '.join(MODES)}, got {mode!r}."
            raise ValueError(msg)
        core = ov.Core()
        precision = resolve_precision(precision, device, core)
        # No CACHE_DIR: compiled blobs are never written next to the caller's working directory.
        config = {"PERFORMANCE_HINT": MODES[mode]}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.model_path = model
        self.device = device
        self.precision = precision
        self.mode = mode
        self.compiled = core.compile_model(str(model), device, config)
        if len(self.compiled.inputs) != 1:
            msg = f"{model} has {len(self.compiled.inputs)} inputs; an exported anomaly model has one image input."
            raise ValueError(msg)
        self._outputs = {name: port for port in self.compiled.outputs for name in port.get_names()}
        if "pred_score" not in self._outputs:
            msg = f"{model} has no pred_score output ({', '.join(self.output_names)}): not an exported anomaly model."
            raise ValueError(msg)
        self._request = self.compiled.create_infer_request()

    @property
    def output_names(self) -> list[str]:
        """Names of the model's outputs (``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``)."""
        return sorted(self._outputs)

    def predict(self, image: np.ndarray) -> Prediction:
        """Score one RGB image ``[H, W, 3]``, float in [0, 1], any size; ``path`` of the result is empty."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            msg = f"Expected an RGB image of shape [H, W, 3], got shape {list(image.shape)}."
            raise ValueError(msg)
        if not np.issubdtype(image.dtype, np.floating):
            msg = f"Expected a float image in [0, 1], got dtype {image.dtype} (divide 8-bit images by 255)."
            raise TypeError(msg)
        start = time.perf_counter()
        self._request.infer(_batch(image.transpose(2, 0, 1)))
        return self._prediction(self._request, "", time.perf_counter() - start, keep_map=True)

    def predict_files(
        self,
        paths: Iterable[Path],
        on_result: Callable[[Prediction], None] | None = None,
        keep_maps: bool = False,
    ) -> list[Prediction]:
        """Score image files; one Prediction per path, in input order.

        A file that cannot be read or scored gives a Prediction with ``error`` set and the run goes on.
        ``on_result`` is called in the caller's thread as each image finishes: in input order in latency mode,
        in completion order in throughput mode. Anomaly maps are kept only with ``keep_maps``. After an inference
        error in throughput mode, the remaining images are scored one at a time.
        """
        paths = list(paths)
        if self.mode == "throughput":
            return self._predict_async(paths, on_result, keep_maps)
        predictions = []
        for path in paths:
            predictions.append(self._predict_file(path, keep_maps))
            if on_result is not None:
                on_result(predictions[-1])
        return predictions

    def _predict_file(self, path: Path, keep_maps: bool) -> Prediction:
        start = time.perf_counter()
        try:
            self._request.infer(_batch(read_rgb(path).numpy()))
            return self._prediction(self._request, str(path), time.perf_counter() - start, keep_maps)
        except Exception as error:  # noqa: BLE001 (one bad file must not end a run over thousands)
            return _failure(path, error, time.perf_counter() - start)

    def _predict_async(
        self,
        paths: list[Path],
        on_result: Callable[[Prediction], None] | None,
        keep_maps: bool,
    ) -> list[Prediction]:
        predictions: list[Prediction | None] = [None] * len(paths)
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()

        def callback(request: ov.InferRequest, userdata: tuple[int, float, float]) -> None:
            # Runs in an OpenVINO thread, where an exception would be lost: it must not raise.
            index, read_seconds, submitted = userdata
            seconds = read_seconds + time.perf_counter() - submitted
            try:
                predictions[index] = self._prediction(request, str(paths[index]), seconds, keep_maps)
            except Exception as error:  # noqa: BLE001 (see above)
                predictions[index] = _failure(paths[index], error, seconds)
            finished.put(index)

        def report_finished() -> None:
            while not finished.empty():
                index = finished.get()
                if on_result is not None:
                    on_result(predictions[index])

        infer_queue = ov.AsyncInferQueue(self.compiled, self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        infer_queue.set_callback(callback)
        try:
            for index, path in enumerate(paths):
                start = time.perf_counter()
                try:
                    image = _batch(read_rgb(path).numpy())
                except Exception as error:  # noqa: BLE001 (as in _predict_file)
                    predictions[index] = _failure(path, error, time.perf_counter() - start)
                    finished.put(index)
                    continue
                read_seconds = time.perf_counter() - start
                infer_queue.get_idle_request_id()  # wait here, so that waiting for a free request is not timed
                report_finished()
                infer_queue.start_async(image, (index, read_seconds, time.perf_counter()))
            infer_queue.wait_all()
        except RuntimeError:
            # A request that fails while running gets no callback and poisons the queue: every later start_async
            # and wait_all rethrows its error without saying which image it was. Let the running requests finish,
            # then score the images without a result one by one, where each error stays with its image.
            for request in infer_queue:
                with contextlib.suppress(RuntimeError):
                    request.wait()
        report_finished()
        for index, prediction in enumerate(predictions):
            if prediction is None:
                predictions[index] = self._predict_file(paths[index], keep_maps)
                if on_result is not None:
                    on_result(predictions[index])
        return predictions

    def _prediction(self, request: ov.InferRequest, path: str, seconds: float, keep_map: bool) -> Prediction:
        score = float(request.get_tensor(self._outputs["pred_score"]).data.reshape(-1)[0])
        label = anomaly_map = None
        # Without thresholding in the graph there is no pred_label; without maps, no anomaly_map.
        if "pred_label" in self._outputs:
            label = bool(request.get_tensor(self._outputs["pred_label"]).data.reshape(-1)[0])
        if keep_map and "anomaly_map" in self._outputs:
            # np.array copies: the request's output memory is reused by the next image.
            anomaly_map = np.array(request.get_tensor(self._outputs["anomaly_map"]).data[0, 0], dtype=np.float32)
        return Prediction(path, score, label, seconds, None, anomaly_map)


def _batch(chw: np.ndarray) -> np.ndarray:
    """A batch of one, float32 and contiguous, as the model's input expects."""
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def _failure(path: str | Path, error: Exception, seconds: float) -> Prediction:
    if isinstance(error, ImageReadError):  # its message names the file already
        return Prediction(str(path), seconds=seconds, error=str(error))
    # OpenVINO's messages span lines; one line keeps a CSV row per image readable.
    message = " ".join(f"Cannot score {path}: {type(error).__name__}: {error}".split())
    return Prediction(str(path), seconds=seconds, error=message)


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image paths from files, folders (recursive, image extensions only) and glob patterns, deduplicated.

    Files are taken as given; glob matches are filtered to image extensions like folder contents. Raises
    FileNotFoundError naming an input that is neither a file nor a folder and matches nothing.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = list_images(path)
        else:
            found = []
            for name in sorted(glob.glob(str(path), recursive=True)):
                match = Path(name)
                if match.is_dir():
                    with contextlib.suppress(FileNotFoundError):  # a matched folder without images adds none
                        found.extend(list_images(match))
                elif match.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(match)
            if not found:
                msg = f"No image matches {item!r}: it is not a file, a folder or a glob pattern matching images."
                raise FileNotFoundError(msg)
        for image_path in found:
            key = image_path.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(image_path)
    return paths


def write_overlay(image_path: str | Path, anomaly_map: np.ndarray, destination: str | Path) -> Path:
    """Write a PNG of the image with ``anomaly_map`` (``[h, w]``, any size) over it as a "jet" heat map."""
    from matplotlib import colormaps  # imported here: matplotlib is slow to import and only overlays need it

    image = read_rgb(image_path).permute(1, 2, 0).numpy()
    height, width = image.shape[:2]
    resized = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32).squeeze(), mode="F")
    resized = np.asarray(resized.resize((width, height), Image.Resampling.BILINEAR))
    # Exported maps are already normalised to [0, 1] with the threshold at 0.5; rescaling per image would make
    # normal images look as hot as defective ones.
    heat = colormaps["jet"](np.clip(resized, 0.0, 1.0))[..., :3]
    blended = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * heat
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(destination, format="PNG")
    return destination
