"""Inference speed side by side: EfficientAdPlugin (torch, OpenVINO FP32/FP16/INT8), anomalib's stock EfficientAd and
PatchCore (wide_resnet50_2 and tf_efficientnet_lite0, the latter also INT8), the lean tool (tools/infer.py's detector)
and anomalib predict.

Latency: batch 1, median and p95 over --runs synchronous runs after --warmup (as the paper times it), OpenVINO
compiled with PERFORMANCE_HINT LATENCY. Throughput: OpenVINO's AsyncInferQueue with PERFORMANCE_HINT THROUGHPUT on
all cores; torch runs batch 1 back to back. Every OpenVINO model runs at each of --precisions
(INFERENCE_PRECISION_HINT; default f32 only, since OpenVINO would otherwise run bf16 on CPUs with bf16 support;
"auto" = bf16 where native). PatchCore-Lite0 is quantised to INT8 like the plugin, so INT8 meets INT8. Each variant
runs in its own process, whose peak resident memory (VmHWM) is reported. Offline: random weights (speed does not
depend on their values), generated images.

With --native_sizes the plugin also runs in native-resolution mode (local_size native: one dynamic-size graph) on
square images of each side, torch and OpenVINO FP32/INT8, with latency and peak memory per megapixel.

example: efficientad-bench-inference --precisions f32 bf16 --output docs/bench_inference.json
example: efficientad-bench-inference --native_sizes 640 1024 2048 --only native "EfficientAdPlugin OpenVINO" Lite0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.benchmarking.child import add_child_result_argument, run_in_child, write_child_result
from efficientad_plugin.benchmarking.speed import (
    export_openvino_batch1,
    latency_ms,
    measure_openvino,
    peak_memory_mib,
)
from efficientad_plugin.cli import console_command

MEMORY_BANK_PATCHES = 20_480  # PatchCore's 10 % coreset of 200 training images x 32 x 32 patches
PATCHCORE_BACKBONES = {"wide_resnet50_2": ["layer2", "layer3"], "tf_efficientnet_lite0": ["blocks.2", "blocks.4"]}


def _torch_model(kind: str, state: str) -> object:
    import torch

    if kind == "plugin":
        from efficientad_plugin import EfficientAdPlugin

        model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None)
    else:
        from anomalib.models import EfficientAd

        model = EfficientAd()
    model.load_state_dict(torch.load(state, weights_only=True))
    return model.eval()


def measure_torch(kind: str, state: str, size: int, warmup: int, runs: int) -> dict[str, float]:
    """Eager torch, the whole forward (resize, model, normalisation), batch 1 on all cores."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = _torch_model(kind, state)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        result = latency_ms(lambda: model(image), warmup, runs)
    return {**result, "throughput_fps": 1000 / result["latency_ms"]}


def measure_torch_native(state: str, side: int, warmup: int, runs: int) -> dict[str, float]:
    """Eager torch in native mode on a ``side`` x ``side`` image, batch 1 on all cores."""
    import torch

    from efficientad_plugin import EfficientAdPlugin

    torch.set_num_threads(os.cpu_count() or 1)
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, local_size="native")
    model.load_state_dict(torch.load(state, weights_only=True))
    model.eval()
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        result = latency_ms(lambda: model(image), warmup, runs)
    return {**result, "throughput_fps": 1000 / result["latency_ms"]}


def measure_lean_tool(xml: str, folder: str) -> dict[str, float]:
    """tools/infer.py's detector in latency mode: read, score, one result per file; time per image."""
    from efficientad_plugin.inference import OpenVinoDetector, expand_inputs

    detector = OpenVinoDetector(xml, precision="f32")
    paths = expand_inputs([folder])
    detector.predict_files(paths[:2])  # warm-up
    start = time.perf_counter()
    predictions = detector.predict_files(paths)
    elapsed = time.perf_counter() - start
    if any(prediction.error for prediction in predictions):
        raise RuntimeError(next(prediction.error for prediction in predictions if prediction.error))
    return {"latency_ms": 1000 * elapsed / len(paths), "throughput_fps": len(paths) / elapsed}


def measure_anomalib_predict(state: str, folder: str) -> dict[str, float]:
    """``Engine.predict`` on a folder (dataloader, model, post-processing, visualisation), time per image."""
    from anomalib.engine import Engine

    model = _torch_model("plugin", state)
    engine = Engine(logger=False, enable_progress_bar=False, default_root_dir=tempfile.mkdtemp())
    images = len(list(Path(folder).glob("*.png")))
    start = time.perf_counter()
    engine.predict(model=model, data_path=folder, return_predictions=False)
    elapsed = time.perf_counter() - start
    return {"latency_ms": 1000 * elapsed / images, "throughput_fps": images / elapsed}


def _fit_for_export(model: object, size: int) -> None:
    """Give an untrained EfficientAdPlugin finite statistics, quantiles and score ranges so that it exports."""
    import torch

    model.model.teacher_mean.zero_()
    model.model.teacher_std.fill_(1.0)
    with torch.no_grad():
        model.model.anomaly_map_generator.fit(*model.model.raw_maps(torch.rand(2, 3, size, size)))
    post = model.post_processor
    for buffer, value in ((post.image_min, 0.0), (post.image_max, 1.0), (post.pixel_min, 0.0),
                          (post.pixel_max, 1.0), (post._image_threshold, 0.5), (post._pixel_threshold, 0.5)):
        buffer.fill_(value)


def build_native(workdir: Path, sides: list[int], normal: Path) -> dict[str, tuple[str, ...]]:
    """The plugin in native mode (one dynamic-size graph, FP32 and INT8, and torch) at each of ``sides``."""
    import torch

    from efficientad_plugin import EfficientAdPlugin
    from efficientad_plugin.quantization import quantize_openvino

    native = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, local_size="native").eval()
    _fit_for_export(native, 256)
    torch.save(native.state_dict(), workdir / "native.pt")
    fp32 = native.to_openvino(export_root=workdir / "native_fp32", model_file_name="model")
    int8 = quantize_openvino(fp32, normal, workdir / "native_int8" / "model.xml")
    variants = {}
    for side in sides:
        variants[f"EfficientAdPlugin native torch {side}x{side}"] = ("torch_native", str(workdir / "native.pt"),
                                                                     str(side))
        variants[f"EfficientAdPlugin native OpenVINO FP32 {side}x{side}"] = ("openvino_native", str(fp32), str(side))
        variants[f"EfficientAdPlugin native OpenVINO INT8 {side}x{side}"] = ("openvino_native", str(int8), str(side))
    return variants


def _wanted(name: str, only: list[str] | None) -> bool:
    return not only or any(part in name or name in part for part in only)  # a variant name names its model


def build(workdir: Path, size: int, images: int, only: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Export every model under ``workdir`` (those ``only`` selects) and return each variant's measurement command."""
    import torch
    from anomalib.deploy import CompressionType
    from anomalib.models import EfficientAd, Patchcore

    from efficientad_plugin import EfficientAdPlugin
    from efficientad_plugin.data import generate_mvtec_dataset
    from efficientad_plugin.quantization import quantize_openvino

    torch.manual_seed(0)
    generate_mvtec_dataset(workdir / "data", num_train=32, num_test_good=images, num_test_defect=0, seed=0,
                           image_size=(size, size))
    normal, test = workdir / "data" / "synthetic" / "train" / "good", workdir / "data" / "synthetic" / "test" / "good"
    plugin = EfficientAdPlugin(teacher_weights="untrained", penalty_dir=None, image_size=size).eval()
    _fit_for_export(plugin, size)
    torch.save(plugin.state_dict(), workdir / "plugin.pt")
    fp32 = plugin.to_openvino(export_root=workdir / "plugin_fp32", model_file_name="model")
    fp16 = plugin.to_openvino(export_root=workdir / "plugin_fp16", model_file_name="model",
                              compression_type=CompressionType.FP16)
    int8 = quantize_openvino(fp32, normal, workdir / "plugin_int8" / "model.xml")
    variants = {
        "EfficientAdPlugin torch": ("torch", "plugin", str(workdir / "plugin.pt")),
        "EfficientAdPlugin OpenVINO FP32": ("openvino", str(fp32)),
        "EfficientAdPlugin OpenVINO FP16": ("openvino", str(fp16)),
        "EfficientAdPlugin OpenVINO INT8": ("openvino", str(int8)),
    }
    if _wanted("stock EfficientAd", only):
        stock = EfficientAd().eval()
        torch.save(stock.state_dict(), workdir / "stock.pt")
        stock_fp32 = stock.to_openvino(export_root=workdir / "stock_fp32", model_file_name="model")
        variants["stock EfficientAd torch"] = ("torch", "stock", str(workdir / "stock.pt"))
        variants["stock EfficientAd OpenVINO FP32"] = ("openvino", str(stock_fp32))
    for backbone, layers in PATCHCORE_BACKBONES.items():
        if not _wanted(f"Patchcore {backbone}", only):
            continue
        patchcore = Patchcore(backbone=backbone, layers=layers, pre_trained=False).eval()
        with torch.no_grad():
            channels = sum(feature.shape[1] for feature in patchcore.model.feature_extractor(
                torch.zeros(1, 3, size, size)).values())
        patchcore.model.memory_bank = torch.randn(MEMORY_BANK_PATCHES, channels)
        xml = export_openvino_batch1(patchcore, (size, size), workdir / f"patchcore_{backbone}" / "model.xml")
        variants[f"Patchcore {backbone} OpenVINO FP32"] = ("openvino", str(xml))
        if backbone == "tf_efficientnet_lite0":
            int8_xml = quantize_openvino(xml, normal, workdir / f"patchcore_{backbone}_int8" / "model.xml")
            variants[f"Patchcore {backbone} OpenVINO INT8"] = ("openvino", str(int8_xml))
    variants["lean tool (OpenVINO FP32, files)"] = ("lean", str(fp32), str(test))
    variants["anomalib predict (torch, files)"] = ("predict", str(workdir / "plugin.pt"), str(test))
    return variants


def _measure(argv: list[str], size: int, warmup: int, runs: int, images: int) -> dict[str, float]:
    kind, *rest = argv
    if kind == "openvino":
        result = measure_openvino(rest[0], (size, size), warmup, runs, images, precision=rest[1])
    elif kind == "openvino_native":
        side = int(rest[1])
        result = measure_openvino(rest[0], (side, side), warmup, runs, images, precision=rest[2])
    elif kind == "torch_native":
        result = measure_torch_native(rest[0], int(rest[1]), warmup, runs)
    elif kind == "torch":
        result = measure_torch(rest[0], rest[1], size, warmup, runs)
    elif kind == "lean":
        result = measure_lean_tool(*rest)
    else:
        result = measure_anomalib_predict(*rest)
    return {**result, "peak_memory_mib": peak_memory_mib()}


def with_precisions(variants: dict[str, tuple[str, ...]], precisions: list[str]) -> dict[str, tuple[str, ...]]:
    """Every OpenVINO variant once per precision hint, named ``<variant> [<precision>]``; the others as they are."""
    expanded = {}
    for name, command in variants.items():
        if not command[0].startswith("openvino"):
            expanded[name] = command
            continue
        for precision in dict.fromkeys(precisions):
            expanded[f"{name} [{precision}]"] = (*command, precision)
    return expanded


def _run_variant(command: tuple[str, ...], args: argparse.Namespace) -> dict[str, float]:
    child = run_in_child(__spec__.name, ["--size", args.size, "--warmup", args.warmup, "--runs", args.runs,
                                         "--images", args.images, "--measure", *command])
    if child.failed:
        msg = f"Measuring {command} failed:\n{child.process.stderr[-3000:]}"
        raise RuntimeError(msg)
    return child.result


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the results."""
    lines = ["| variant | latency median (ms) | latency p95 (ms) | throughput (img/s) | peak memory (MiB) "
             "| ms per megapixel |", "|---|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        p95 = f"{result['p95_ms']:.1f}" if "p95_ms" in result else "–"
        per_mp = f"{result['latency_ms'] / result['megapixels']:.0f}" if "megapixels" in result else "–"
        lines.append(f"| {name} | {result['latency_ms']:.1f} | {p95} | {result['throughput_fps']:.1f} "
                     f"| {result['peak_memory_mib']:.0f} | {per_mp} |")
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The issues' targets as ratios (> 1 means the first is slower), from the variants that were measured."""
    latency = {name: result["latency_ms"] for name, result in results.items()}
    stock = latency.get("stock EfficientAd OpenVINO FP32 [f32]")
    plugin = latency.get("EfficientAdPlugin OpenVINO FP32 [f32]")
    found = {}
    if stock and plugin:
        found["stock OpenVINO FP32 / plugin OpenVINO FP32 latency (target >= 1)"] = stock / plugin
    if stock and "EfficientAdPlugin OpenVINO INT8 [f32]" in latency:
        found["stock OpenVINO FP32 / plugin OpenVINO INT8 latency (target >= 1.75)"] = (
            stock / latency["EfficientAdPlugin OpenVINO INT8 [f32]"])
    fastest = min((name for name in latency if name.startswith("EfficientAdPlugin OpenVINO")), key=latency.get,
                  default=None)
    if stock and fastest:
        found[f"stock OpenVINO FP32 / fastest plugin setting ({fastest}) latency"] = stock / latency[fastest]
    for precision in ("f32", "bf16"):
        ours, theirs = (latency.get(f"{name} OpenVINO INT8 [{precision}]")
                        for name in ("EfficientAdPlugin", "Patchcore tf_efficientnet_lite0"))
        if ours and theirs:
            found[f"plugin INT8 / PatchCore-Lite0 INT8 latency [{precision}]"] = ours / theirs
    if plugin and "lean tool (OpenVINO FP32, files)" in latency:
        found["lean tool per image / plugin OpenVINO FP32 latency (target <= 1.2)"] = (
            latency["lean tool (OpenVINO FP32, files)"] / plugin)
    if plugin and "anomalib predict (torch, files)" in latency:
        found["anomalib predict per image / plugin OpenVINO FP32 latency"] = (
            latency["anomalib predict (torch, files)"] / plugin)
    return found


def main(argv: list[str] | None = None) -> dict:
    """Build the exports, measure each variant in its own process, print a table and ratios, write JSON."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="square input side (default: 256)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100, help="timed latency runs per variant (default: 100)")
    parser.add_argument("--images", type=int, default=64, help="images for throughput and the file-based paths")
    parser.add_argument("--only", nargs="+", help="measure only the variants whose names contain one of these")
    parser.add_argument("--precisions", nargs="+", choices=("f32", "bf16", "f16", "auto"), default=["f32"],
                        help="INFERENCE_PRECISION_HINTs to run every OpenVINO variant at (default: f32)")
    parser.add_argument("--native_sizes", type=int, nargs="+", default=[],
                        help="also the plugin in native-resolution mode on square images of these sides")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # internal: one variant, in a child
    add_child_result_argument(parser)
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    if args.measure:
        result = _measure(args.measure, args.size, args.warmup, args.runs, args.images)
        write_child_result(args.child_result, result)
        return result
    from efficientad_plugin.inference import resolve_precision

    with tempfile.TemporaryDirectory() as workdir:
        variants = build(Path(workdir), args.size, args.images, args.only)
        if args.native_sizes:
            normal = Path(workdir) / "data" / "synthetic" / "train" / "good"
            variants.update(build_native(Path(workdir), args.native_sizes, normal))
        variants = with_precisions(variants, [resolve_precision(precision) for precision in args.precisions])
        if args.only:
            variants = {name: command for name, command in variants.items()
                        if any(part in name for part in args.only)}
        results = {}
        for name, command in variants.items():
            results[name] = _run_variant(command, args)
            side = int(command[2]) if command[0].endswith("_native") else args.size
            results[name]["megapixels"] = side * side / 1e6
            print(f"{name}: {results[name]}", file=sys.stderr)
    report = {"machine": _machine(), "size": args.size, "native_sizes": args.native_sizes, "runs": args.runs,
              "precisions": args.precisions, "results": results}
    print(table(results))
    report["ratios"] = ratios(results)
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.2f}")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return report


def _machine() -> dict[str, str | int]:
    import platform

    import openvino as ov
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "torch": torch.__version__, "openvino": ov.get_version()}


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
