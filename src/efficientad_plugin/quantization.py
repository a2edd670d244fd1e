"""INT8 post-training quantisation of an exported model with NNCF, calibrated on images of normal parts only.

anomalib's ``--compression_type INT8_PTQ`` calibrates on the datamodule's validation split, which holds defective
images unless ``val_split_mode`` is ``from_train``; here the calibration images are a folder the user names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openvino as ov

from .images import list_images, read_rgb
from .pdn import TEACHER_CHANNELS

CALIBRATION_IMAGES = 300  # NNCF's default subset size


def output_convolutions(model: ov.Model) -> list[str]:
    """Names of the convolutions that produce feature maps compared in the anomaly maps.

    These are the last layers of teacher, student and autoencoder: the only convolutions whose output width is a
    multiple of the teacher's 384 channels (the student's is 768).
    """
    names = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Convolution":
            continue
        channels = node.get_output_partial_shape(0)[1]
        if channels.is_static and channels.get_length() % TEACHER_CHANNELS == 0:
            names.append(node.get_friendly_name())
    return names


def quantize_openvino(
    model: str | Path,
    calibration_images: str | Path | Sequence[str | Path],
    output: str | Path,
    subset_size: int = CALIBRATION_IMAGES,
    keep_output_layers: bool = False,
) -> Path:
    """Write an INT8 copy of an exported OpenVINO model (``.xml`` or ``.onnx``) to ``output`` (``.xml``).

    Args:
        model: the FP32 (or FP16) export of an EfficientAdPlugin, pre- and post-processing in the graph.
        calibration_images: a folder (searched recursively) or a list of images of normal parts, e.g. the
            training images. Defective images would shift the activation ranges towards defects.
        output: the ``.xml`` to write; its ``.bin`` is written beside it.
        subset_size: how many of the calibration images NNCF uses (all when there are fewer).
        keep_output_layers: keep the convolutions listed by :func:`output_convolutions` in floating point: the
            anomaly maps are differences of their outputs, where quantisation errors do not cancel.
    """
    import nncf  # imported here: it takes seconds and only quantisation needs it

    paths = list_images(calibration_images) if isinstance(calibration_images, str | Path) else [
        Path(path) for path in calibration_images]
    if not paths:
        msg = "quantize_openvino needs at least one calibration image of a normal part."
        raise ValueError(msg)
    ir = ov.Core().read_model(str(model))
    ignored_scope = nncf.IgnoredScope(names=output_convolutions(ir)) if keep_output_layers else None
    dataset = nncf.Dataset(paths, lambda path: np.ascontiguousarray(read_rgb(path).numpy()[None]))
    quantized = nncf.quantize(ir, dataset, subset_size=min(subset_size, len(paths)), ignored_scope=ignored_scope)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # No compression to fp16 of what stays in floating point: the output layers are kept for their precision.
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    return output
