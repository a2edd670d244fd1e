"""INT8 post-training quantisation of an exported model with NNCF, calibrated on images of normal parts only.

anomalib's ``--compression_type INT8_PTQ`` calibrates on the datamodule's validation split, which holds defective
images unless ``val_split_mode`` is ``from_train``; its ``INT8_ACQ`` controls accuracy with the test split, which
leaks the test set into the model. Here the calibration images are a folder the user names, and accuracy control
(``max_score_drift``) needs no labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .images import list_images, read_rgb
from .model_info import SECTION, model_info

if TYPE_CHECKING:  # OpenVINO is the optional `openvino` extra: imported where used
    import openvino as ov

CALIBRATION_IMAGES = 300  # NNCF's default subset size
HOLD_OUT_EVERY = 4  # with max_score_drift and no validation images: every 4th calibration image checks the drift
VALIDATION_IMAGES = 50  # at most this many held out: accuracy control scores them once per candidate layer
# Kept in floating point: the anomaly-map arithmetic after the three networks (teacher - student and autoencoder
# differences, squares, channel means, the sum of both maps) and every resize. Calibrated on normal images, their
# INT8 ranges end at the largest difference a normal part produces, so a defect's map is clipped to a normal value
# (measured: a defect's score 1.0 -> 0.03, image AUROC -3.8 points). They are cheap element-wise operations; the
# convolutions, where the time goes, stay INT8.
FLOAT_OPERATION_TYPES = ("Subtract", "Power", "ReduceMean", "Add", "Interpolate")


def quantize_openvino(
    model: str | Path,
    calibration_images: str | Path | Sequence[str | Path],
    output: str | Path,
    subset_size: int = CALIBRATION_IMAGES,
    max_score_drift: float | None = None,
    validation_images: str | Path | Sequence[str | Path] | None = None,
) -> Path:
    """Write an INT8 copy of an exported OpenVINO model (``.xml`` or ``.onnx``) to ``output`` (``.xml``).

    Args:
        model: the FP32 (or FP16) export of an EfficientAdPlugin, pre- and post-processing in the graph.
        calibration_images: a folder (searched recursively) or a list of images of normal parts, e.g. the
            training images. Defective images would shift the activation ranges towards defects.
        output: the ``.xml`` to write; its ``.bin`` is written beside it.
        subset_size: how many of the calibration images NNCF uses (all when there are fewer).
        max_score_drift: with a value in (0, 1), accuracy control (``nncf.quantize_with_accuracy_control``):
            layers go back to floating point, most harmful first, until no validation image's score (normalised,
            threshold 0.5) differs from the FP32 model's by more than this. ``None``: plain quantisation.
        validation_images: normal images, none of them among the calibration images, to measure that drift on;
            ``None``: every 4th calibration image (at most 50) is held out of calibration for it.

    The convolutions are INT8 with the calibration images' global min/max activation ranges (NNCF's default
    averages per-image ranges, which clips more); the map arithmetic and resizes stay in floating point
    (``FLOAT_OPERATION_TYPES``). ``float_convolutions`` lists the convolutions accuracy control left in float.
    """
    import nncf  # imported here: it takes seconds and only quantisation needs it
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    calibration = _image_paths(calibration_images)
    if not calibration:
        msg = "quantize_openvino needs at least one calibration image of a normal part."
        raise ValueError(msg)
    if max_score_drift is None and validation_images is not None:
        msg = "validation_images are used only for accuracy control: set max_score_drift as well."
        raise ValueError(msg)
    if max_score_drift is not None:
        calibration, validation = _split_validation(calibration, validation_images, max_score_drift)
    ir = ov.Core().read_model(str(model))
    dataset = nncf.Dataset(calibration, _model_input)
    arguments = {
        "subset_size": min(subset_size, len(calibration)),
        "ignored_scope": nncf.IgnoredScope(types=list(FLOAT_OPERATION_TYPES), validate=False),
    }
    parameters = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    if max_score_drift is None:
        quantized = nncf.quantize(ir, dataset, advanced_parameters=parameters, **arguments)
    else:
        reference = _scores(ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), validation)
        quantized = nncf.quantize_with_accuracy_control(
            ir, dataset, nncf.Dataset(list(zip(validation, reference, strict=True))), _score_agreement,
            max_drop=max_score_drift, drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=parameters, **arguments)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # What stays in floating point (resize, normalisation, reverted layers) stays fp32.
    for key, value in model_info(ir).items():  # Model API's metadata, if the export has it (NNCF drops it)
        quantized.set_rt_info(value, [SECTION, key])
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    return output


def float_convolutions(model: str | Path | ov.Model) -> dict[str, list[int]]:
    """The convolutions of a quantised model that run in floating point: name -> weight shape [out, in, kh, kw].

    A convolution runs in INT8 when its input comes from a FakeQuantize; accuracy control removes that for the
    layers it reverts. Names are the export's (e.g. ``node_conv2d_3``); the shape tells the layer apart.
    """
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(str(model))
    return {op.get_friendly_name(): [int(size) for size in op.input(1).get_shape()]
            for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
            and op.input_value(0).get_node().get_type_name() != "FakeQuantize"}


def _image_paths(images: str | Path | Sequence[str | Path]) -> list[Path]:
    return list_images(images) if isinstance(images, str | Path) else [Path(path) for path in images]


def _split_validation(
    calibration: list[Path],
    validation_images: str | Path | Sequence[str | Path] | None,
    max_score_drift: float,
) -> tuple[list[Path], list[Path]]:
    """Calibration and validation images for accuracy control, disjoint; checks ``max_score_drift``."""
    # Scores lie in [0, 1]: a drift of 1 or more bounds nothing, and 0 would send every layer back to float.
    if not 0 < max_score_drift < 1:
        msg = f"max_score_drift must be between 0 and 1 (exclusive), got {max_score_drift}."
        raise ValueError(msg)
    if validation_images is None:
        validation = calibration[::HOLD_OUT_EVERY][:VALIDATION_IMAGES]
        held_out = set(validation)
        calibration = [path for path in calibration if path not in held_out]
        if not calibration:
            msg = "Accuracy control without validation_images needs at least 2 calibration images to hold some out."
            raise ValueError(msg)
        return calibration, validation
    validation = _image_paths(validation_images)
    if not validation:
        msg = "validation_images is empty: accuracy control needs held-out images of normal parts."
        raise ValueError(msg)
    shared = {path.resolve() for path in calibration} & {path.resolve() for path in validation}
    if shared:
        msg = (f"{len(shared)} validation image(s) are also calibration images (e.g. {min(shared)}): the drift must "
               "be measured on images the calibration has not seen.")
        raise ValueError(msg)
    return calibration, validation


def _model_input(path: Path) -> np.ndarray:
    return np.ascontiguousarray(read_rgb(path).numpy()[None])


def _scores(model: ov.CompiledModel, paths: Iterable[Path]) -> list[float]:
    score = model.output("pred_score")
    return [float(model(_model_input(path))[score].reshape(-1)[0]) for path in paths]


def _score_agreement(model: ov.CompiledModel, items: Iterable[tuple[Path, float]]) -> tuple[float, list[float]]:
    """NNCF's validation metric (higher is better): 1 minus the largest score change against FP32, and per image.

    Label-free, so no test image reaches the deployed model: on held-out normal images, the quantised model's
    normalised scores are compared with the FP32 model's. The image score alone decides labels and image AUROC,
    and it is a map maximum, which quantisation noise raises on normal parts; the worst image, not the mean,
    bounds the false alarms near the threshold. NNCF's drop (the FP32 model's 1 minus this) is the largest drift.
    """
    paths, reference = zip(*items, strict=True)
    # 1 minus, not minus: NNCF 3.4 divides by the FP32 model's metric even for an absolute drop, and 0 fails.
    agreement = [1 - abs(score - expected) for score, expected in zip(_scores(model, paths), reference, strict=True)]
    return min(agreement), agreement
