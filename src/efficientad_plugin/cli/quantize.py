"""Quantise an exported EfficientAdPlugin to INT8 with NNCF, calibrated on images of normal parts only.

The anomaly-map arithmetic and the resizes stay in floating point; the convolutions become INT8. With --max-drift,
NNCF's accuracy control returns the convolutions that change scores most to floating point until no held-out
normal image's score (normalised, threshold 0.5) moves by more than that; no labels are used. The convolutions left
in floating point are printed.

With --evaluate, the FP32 and INT8 models are scored side by side on the test split of an MVTec-layout category
(OpenVINO with INFERENCE_PRECISION_HINT f32, so that INT8 is compared with true FP32) and the AUROC change printed.

example: efficientad-quantize results/weights/openvino/model.xml --calibration datasets/pcb/train/good \\
             --output results/weights/openvino_int8/model.xml --max-drift 0.02 --evaluate datasets/pcb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.cli import console_command
from efficientad_plugin.quantization import CALIBRATION_IMAGES, float_convolutions, quantize_openvino


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Quantise, optionally evaluate both models, print the result as JSON and return it."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="FP32 export: OpenVINO .xml (with its .bin) or .onnx")
    parser.add_argument("--calibration", type=Path, required=True,
                        help="folder of images of normal parts (e.g. the training images)")
    parser.add_argument("--output", type=Path, required=True, help="INT8 .xml to write")
    parser.add_argument("--subset-size", type=int, default=CALIBRATION_IMAGES,
                        help=f"calibration images used (default: {CALIBRATION_IMAGES})")
    parser.add_argument("--max-drift", type=float,
                        help="accuracy control: largest score change allowed on held-out normal images, in (0, 1)")
    parser.add_argument("--validation", type=Path,
                        help="with --max-drift: folder of normal images not in --calibration to measure the drift "
                             "on (default: every 4th calibration image, at most 50, is held out of calibration)")
    parser.add_argument("--evaluate", type=Path, help="MVTec-layout category folder whose test split scores both")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    from efficientad_plugin.evaluation import evaluate_detector  # OpenVINO (optional extra) loads only when used
    from efficientad_plugin.inference import OpenVinoDetector
    quantize_openvino(args.model, args.calibration, args.output, args.subset_size, args.max_drift, args.validation)
    print(f"INT8 model written to {args.output}")
    results: dict[str, dict[str, object]] = {"float_convolutions": float_convolutions(args.output)}
    print(f"Convolutions in floating point: {len(results['float_convolutions'])}")
    for name, shape in results["float_convolutions"].items():
        print(f"  {name}: weights {'x'.join(map(str, shape))}")
    if args.evaluate:
        for name, path in (("fp32", args.model), ("int8", args.output)):
            results[name] = evaluate_detector(OpenVinoDetector(path, precision="f32"), args.evaluate)
        results["change"] = {key: results["int8"][key] - results["fp32"][key] for key in results["fp32"]}
        print(json.dumps(results, indent=2))
    return results


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
