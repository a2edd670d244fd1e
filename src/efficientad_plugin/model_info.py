"""The metadata that OpenVINO Model API (``openvino-model-api``) reads from an IR, so it runs our export unchanged.

Model API (used by Intel Geti, OTX and OpenVINO's serving demos) picks its wrapper from the IR's runtime info
``model_info/model_type`` and reads the wrapper's parameters from the same section. anomalib 2.7 writes none of it
for any model. For ``AnomalyDetection`` our graph needs no help: it returns all four of ``pred_score``,
``pred_label``, ``anomaly_map`` and ``pred_mask`` (normalised, threshold 0.5), which Model API passes through, and its
input is dynamic in height and width, so Model API neither resizes nor normalises (the resize and the ImageNet
normalisation are in the graph). What it cannot represent: its ``AnomalyResult`` holds the map as ``uint8``
(``round(255 * map)``) and the label as the text of the graph's boolean (``"True"``/``"False"``), and it compiles with
OpenVINO's default precision (bf16 on CPUs with native bf16) unless its adapter is given ``INFERENCE_PRECISION_HINT``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # OpenVINO is the optional `openvino` extra
    import openvino as ov

SECTION = "model_info"
# Parameters of Model API's AnomalyDetection wrapper (model_api.models.parameters.ParameterRegistry.ANOMALY/LABELS).
# The thresholds and scale describe our normalised outputs; Model API uses them only for graphs that return a raw
# map, but a reader of the IR (or a later Model API) finds the right values there.
MODEL_INFO: dict[str, str] = {
    "model_type": "AnomalyDetection",
    "task": "segmentation",
    "labels": "Normal Anomaly",
    "image_threshold": "0.5",
    "pixel_threshold": "0.5",
    "normalization_scale": "1.0",
    "reverse_input_channels": "False",  # the graph takes RGB, as anomalib's inferencers pass it
}


def add_model_info(model: ov.Model, **extra: str) -> ov.Model:
    """Write ``MODEL_INFO`` (and ``extra`` keys, e.g. the plugin's name) into ``model``'s runtime info; return it."""
    for key, value in {**MODEL_INFO, **extra}.items():
        model.set_rt_info(str(value), [SECTION, key])
    return model


def model_info(model: str | Path | ov.Model) -> dict[str, str]:
    """The ``model_info`` section of an IR (path or model) as plain strings; empty when it has none."""
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(str(model))
    if not model.has_rt_info(SECTION):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()[SECTION].items()}


def write_model_info(xml: str | Path, **extra: str) -> Path:
    """Add the metadata to the IR at ``xml`` (its ``.bin`` beside it) in place, through a temporary copy.

    OpenVINO maps the ``.bin`` it reads, so the model is saved to a temporary folder and then moved over the originals.
    """
    import openvino as ov

    xml = Path(xml)
    model = add_model_info(ov.Core().read_model(str(xml)), **extra)
    with tempfile.TemporaryDirectory(dir=xml.parent) as folder:
        staged = Path(folder) / xml.name
        # keep the weights as they are (FP16 stays FP16, INT8 stays INT8): no further compression
        ov.save_model(model, str(staged), compress_to_fp16=False)
        del model
        shutil.move(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        shutil.move(staged, xml)
    return xml
