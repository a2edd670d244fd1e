"""Training speed side by side: EfficientAdPlugin against anomalib's stock EfficientAd, same data, size, precision.

Each variant trains in its own process on the same generated images (256x256 by default, batch 1, penalty on,
same random teacher, offline): steps per second from the median wall time of a training step after the warm-up
(by default one epoch, so that the plugin's teacher cache is as full as in all but the first epoch of a real run;
the teacher statistics pass and validation are not steps), peak resident memory, the 1-minute load average when the
variant ends, and the wall time a 70,000-step run would take at that speed. Prints a table and the plugin/stock
ratios; writes JSON.

With --native_size N the images are N x N and a third variant trains in native-resolution mode (local_size
native: 256-px crops, the autoencoder on the whole image at 256) beside the plugin resizing them to 256. With
--local_only another variant times the steps before ``autoencoder_start``, which train the local branch only.

example: efficientad-bench-train --steps 25 --precisions 32 bf16-mixed --output docs/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.benchmarking.child import add_child_result_argument, run_in_child, write_child_result
from efficientad_plugin.cli import console_command

PAPER_STEPS = 70_000
MODELS = ("EfficientAdPlugin", "EfficientAd")
NATIVE_VARIANT = "EfficientAdPlugin native"
LOCAL_ONLY_VARIANT = "EfficientAdPlugin local-only"


def _prepare(workdir: Path, size: int, train_images: int) -> None:
    """Generated data, a random PDN-S teacher where both models look for it, and a penalty folder of photos."""
    import shutil

    import torch

    from efficientad_plugin.data import generate_mvtec_dataset
    from efficientad_plugin.pdn import PatchDescriptionNetwork
    from efficientad_plugin.penalty import BUNDLED, PenaltyImages

    generate_mvtec_dataset(workdir / "data", num_train=train_images, num_test_good=2, num_test_defect=2, seed=0,
                           image_size=(size, size))
    torch.manual_seed(0)
    teacher = workdir / "cache" / "anomalib" / "pre_trained" / "efficientad_pretrained_weights"
    teacher.mkdir(parents=True)
    torch.save(PatchDescriptionNetwork("small").state_dict(), teacher / "pretrained_teacher_small.pth")
    # stock EfficientAd reads an ImageFolder (class sub-folders); the plugin reads any folder
    penalty = workdir / "penalty" / "photos"
    penalty.mkdir(parents=True)
    for path in PenaltyImages(BUNDLED, (size, size)).paths[:20]:
        shutil.copy(path, penalty / path.name)


def run_variant(model_name: str, precision: str, workdir: Path, steps: int, warmup: int | None,
                accelerator: str) -> dict[str, float]:
    """Train ``warmup + steps`` steps and time each (in a child process, with the cache pointed at ``workdir``).

    ``warmup`` ``None`` is one epoch.
    """
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything

    from efficientad_plugin import EfficientAdPlugin
    from efficientad_plugin.benchmarking.speed import peak_memory_mib

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args: object) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            self.times.append(time.perf_counter() - self.start)

    seed_everything(0)
    datamodule = MVTecAD(root=workdir / "data", category="synthetic", train_batch_size=1, eval_batch_size=4,
                         num_workers=0, val_split_mode="from_train", val_split_ratio=0.1, seed=0)
    if warmup is None:
        datamodule.setup()
        warmup = len(datamodule.train_data)
    total = warmup + steps
    teacher = workdir / "cache" / "anomalib" / "pre_trained" / "efficientad_pretrained_weights"
    if model_name.startswith("EfficientAdPlugin"):
        # local-only: autoencoder_start past the last step (global_step total - 1 < total - 0.5)
        model = EfficientAdPlugin(teacher_weights=str(teacher / "pretrained_teacher_small.pth"),
                                  penalty_dir=str(workdir / "penalty"), max_steps=total,
                                  local_size="native" if model_name == NATIVE_VARIANT else None,
                                  autoencoder_start=1 - 0.5 / total if model_name == LOCAL_ONLY_VARIANT else 0.0)
    else:
        from anomalib.models import EfficientAd

        model = EfficientAd(imagenet_dir=workdir / "penalty")
    timer = StepTimer()
    engine = Engine(default_root_dir=workdir / "runs" / model_name, logger=False, enable_progress_bar=False,
                    callbacks=[timer], precision=precision, max_steps=total, num_sanity_val_steps=0,
                    accelerator=accelerator, devices=1)
    engine.fit(model, datamodule)
    median = statistics.median(timer.times[warmup:])
    return {"steps_per_second": 1 / median, "seconds_per_step": median, "steps_timed": len(timer.times[warmup:]),
            "warmup_steps": warmup, "hours_for_70k_steps": PAPER_STEPS * median / 3600,
            "peak_memory_mib": peak_memory_mib(), "load_1min": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> dict:
    """Run every model at every precision in its own process; print a table and the ratios; write JSON."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant (default: 20)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default: one epoch)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--native_size", type=int, help="N x N images, and the plugin in native mode beside")
    parser.add_argument("--local_only", action="store_true",
                        help="also time the plugin's local-only steps (before autoencoder_start)")
    parser.add_argument("--train-images", type=int, default=10, help="generated training images, 10 %% of them "
                        "held out for validation (default: 10)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: cpu)")
    parser.add_argument("--precisions", nargs="+", default=["32"], help="Lightning precisions, e.g. 32 bf16-mixed")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    parser.add_argument("--variant", nargs=3, help=argparse.SUPPRESS)  # internal: model precision workdir
    add_child_result_argument(parser)
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    if args.train_images < 10:
        parser.error("--train-images must be at least 10: 10 % of them are held out for validation")
    if args.variant:
        model_name, precision, workdir = args.variant
        write_child_result(args.child_result, run_variant(model_name, precision, Path(workdir), args.steps,
                                                          args.warmup, args.accelerator))
        return {}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        _prepare(workdir, args.native_size or args.size, args.train_images)
        environment = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache")}
        for precision in args.precisions:
            extra = ((NATIVE_VARIANT,) if args.native_size else ()) + ((LOCAL_ONLY_VARIANT,) if args.local_only else ())
            for model_name in (*MODELS, *extra):
                arguments = ["--steps", args.steps, "--accelerator", args.accelerator,
                             "--variant", model_name, precision, workdir]
                if args.warmup is not None:
                    arguments += ["--warmup", args.warmup]
                child = run_in_child(__spec__.name, arguments, env=environment)
                if child.failed:
                    msg = f"{model_name} at precision {precision} failed:\n{child.process.stderr[-3000:]}"
                    raise RuntimeError(msg)
                results[f"{model_name} {precision}"] = child.result
                print(f"{model_name} {precision}: {results[f'{model_name} {precision}']}", file=sys.stderr)
    print("| variant | steps/s | s/step | 70,000 steps (h) | peak memory (MiB) | load |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        print(f"| {name} | {result['steps_per_second']:.3f} | {result['seconds_per_step']:.2f} "
              f"| {result['hours_for_70k_steps']:.1f} | {result['peak_memory_mib']:.0f} | {result['load_1min']:.1f} |")
    stock_fp32 = results.get("EfficientAd 32", {}).get("steps_per_second")
    ratios = {}
    for precision in args.precisions:
        plugin = results[f"EfficientAdPlugin {precision}"]["steps_per_second"]
        ratios[f"plugin {precision} / stock {precision} steps per second"] = (
            plugin / results[f"EfficientAd {precision}"]["steps_per_second"])
        if stock_fp32:
            ratios[f"plugin {precision} / stock 32 steps per second"] = plugin / stock_fp32
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    native, resized = (f"{name} {args.precisions[0]}" for name in (NATIVE_VARIANT, "EfficientAdPlugin"))
    if native in results:
        ratios["plugin native / plugin resized steps per second"] = (
            results[native]["steps_per_second"] / results[resized]["steps_per_second"])
    local_only = f"{LOCAL_ONLY_VARIANT} {args.precisions[0]}"
    if local_only in results:
        ratios["plugin local-only / plugin steps per second"] = (
            results[local_only]["steps_per_second"] / results[resized]["steps_per_second"])
    report = {"steps": args.steps, "warmup": args.warmup, "size": args.size, "native_size": args.native_size,
              "train_images": args.train_images,
              "accelerator": args.accelerator, "results": results, "ratios": ratios}
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return report


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
