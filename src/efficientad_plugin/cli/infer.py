"""Score images with an exported OpenVINO model and write one row per image to CSV or JSON.

Exits 0 when every image was scored, 1 when any failed (its row carries the error), 2 on bad arguments,
inputs that match nothing or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm import tqdm

from efficientad_plugin.cli import console_command

if TYPE_CHECKING:
    from efficientad_plugin.inference import Prediction

COLUMNS = ("path", "score", "label", "seconds", "error")
OUTPUT_SUFFIXES = (".csv", ".json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--precision default`` means the device's own precision."""
    parser = ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: efficientad-infer results/weights/openvino/model.xml 'line3/**/*.png' "
               "--output results.csv --mode throughput",
    )
    parser.add_argument("model", type=Path, help="exported model: OpenVINO .xml (with its .bin) or .onnx")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns "
                        "(quote them; ** recurses)")
    parser.add_argument("--output", type=Path, required=True, help="results file, .csv or .json")
    parser.add_argument("--overlays", type=Path, help="folder for heat-map overlays of the scored images (PNG)")
    parser.add_argument("--mode", choices=("latency", "throughput"), default="latency",
                        help="latency: one image at a time; throughput: several in flight (default: latency)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    parser.add_argument("--precision", choices=("f32", "bf16", "f16", "auto", "default"), default="f32",
                        help="inference precision hint; auto = bf16 where the device computes it natively, else f32 "
                             "(with --check-drift: the fastest setting within --max-drift); default = the device's "
                             "own (default: f32)")
    parser.add_argument("--check-drift", type=Path, metavar="NORMAL_IMAGES",
                        help="first compare bf16 (and --int8-model) with f32 on these normal images: largest score "
                             "drift and latency per setting")
    parser.add_argument("--int8-model", type=Path, help="INT8 IR of the same model (efficientad-quantize) to check")
    parser.add_argument("--max-drift", type=float, default=0.02,
                        help="largest score drift --precision auto accepts after --check-drift (default: 0.02)")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        parser.error(f"--output must end in .csv or .json, got {args.output}")
    if args.int8_model is not None and args.check_drift is None:
        parser.error("--int8-model is checked against the model with --check-drift NORMAL_IMAGES: give both")
    return args


def choose_setting(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The model file and precision hint to score with; with --check-drift, print the check's table first."""
    from efficientad_plugin.inference import resolve_precision

    precision = None if args.precision == "default" else args.precision
    if args.check_drift is None:
        return args.model, resolve_precision(precision, args.device)
    from efficientad_plugin.benchmarking.precision import fastest_within, markdown_table, precision_check

    rows = precision_check(args.model, args.check_drift, args.int8_model, device=args.device)
    print(markdown_table(rows, args.max_drift))
    if precision != "auto":
        return args.model, resolve_precision(precision, args.device)
    chosen = fastest_within(rows, args.max_drift)
    return Path(chosen["model"]), chosen["precision"]


def overlay_destinations(paths: list[Path], folder: Path) -> dict[str, Path]:
    """Overlay file per image, mirroring the folders below the inputs' common parent.

    The source suffix stays in the name so that ``a.png`` and ``a.jpg`` side by side do not overwrite each other.
    """
    root = Path(os.path.commonpath([path.resolve().parent for path in paths]))
    destinations = {}
    for path in paths:
        relative = path.resolve().relative_to(root)
        destinations[str(path)] = folder / relative.parent / f"{relative.stem}_{relative.suffix.lstrip('.')}.png"
    return destinations


def write_rows(predictions: list[Prediction], output: Path) -> None:
    """One row per image (path, score, label, seconds, error), as CSV or JSON by the file's suffix."""
    rows = [{column: getattr(prediction, column) for column in COLUMNS} for prediction in predictions]
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with output.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit status is 1 when any image failed."""
    args = parse_args(argv)
    # Imported after parsing: the package pulls in anomalib and torch (seconds), which --help does not need.
    from efficientad_plugin.inference import OpenVinoDetector, expand_inputs, write_overlay

    try:
        paths = expand_inputs(args.inputs)
        model, precision = choose_setting(args)
        detector = OpenVinoDetector(model, device=args.device, precision=precision, mode=args.mode)
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # RuntimeError: OpenVINO cannot compile it
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"scoring with {model} at precision {precision or 'device default'} on {args.device}")
    destinations = overlay_destinations(paths, args.overlays) if args.overlays else {}
    progress = tqdm(total=len(paths), unit="image", disable=None)  # disable=None: no bar when not a terminal

    def on_result(prediction: Prediction) -> None:
        if prediction.anomaly_map is not None:
            write_overlay(prediction.path, prediction.anomaly_map, destinations[prediction.path])
            prediction.anomaly_map = None  # written: do not hold every map of a long run in memory
        progress.update()

    start = time.perf_counter()
    predictions = detector.predict_files(paths, on_result, keep_maps=bool(args.overlays))
    elapsed = time.perf_counter() - start
    progress.close()
    write_rows(predictions, args.output)
    scored = [prediction.seconds for prediction in predictions if prediction.error is None]
    failures = len(predictions) - len(scored)
    mean_ms = 1000 * sum(scored) / len(scored) if scored else float("nan")
    print(f"{len(predictions)} images, {failures} failed, {mean_ms:.1f} ms per scored image, "
          f"{len(predictions) / elapsed:.1f} images/s -> {args.output}")
    return 1 if failures else 0


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
