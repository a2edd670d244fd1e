"""One model per product: jobs (an anomalib config plus overrides) and what one job does on a worker.

A job is ``anomalib train`` (fit, then test) with the same config and command-line overrides, followed by the
OpenVINO export and optionally the INT8 copy, in a folder of its own. It resumes from the newest
``last_step.ckpt`` under that folder, so a job whose worker died continues where its last step checkpoint left it,
and a job whose ``result.json`` exists is finished. Neither anomalib (whose ``benchmark`` runs a grid in local
processes) nor Ray knows about anomalib's step checkpoints; this module is the glue.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..callbacks import newest_step_checkpoint

RESULT = "result.json"
RUNNING = "running.json"


@dataclass
class Job:
    """One model to train: an anomalib config, overrides in its dotted keys, and the worker resources it needs.

    ``overrides`` keys are those of ``anomalib train`` flags without the dashes, e.g.
    ``{"data.init_args.category": "bottle", "model.init_args.max_steps": 1000, "seed_everything": 0}``.
    """

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            parts = [Path(self.config).stem] + [f"{key.rpartition('.')[-1]}={value}"
                                                for key, value in sorted(self.overrides.items())]
            self.name = "_".join(parts)
        self.name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", self.name)

    def arguments(self, root: Path) -> list[str]:
        """``anomalib train`` arguments: the config, the overrides, and the job's folder as results root."""
        flags = ["train", "--config", str(self.config)]
        for key, value in self.overrides.items():
            flags += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return [*flags, "--default_root_dir", str(root)]


def expand_jobs(jobs: Sequence[Job | Mapping[str, Any]] = (), config: str | None = None,
                grid: Mapping[str, Sequence[Any]] | None = None, cpus: float = 1.0, gpus: float = 0.0) -> list[Job]:
    """The listed jobs and one job per point of ``grid`` (the product of its values) on ``config``.

    Job names must be unique: they name the jobs' folders.
    """
    expanded = [job if isinstance(job, Job) else Job(**{"cpus": cpus, "gpus": gpus, **job}) for job in jobs]
    if grid:
        if config is None:
            msg = "A grid needs --config: the anomalib config its points override."
            raise ValueError(msg)
        keys = list(grid)
        for values in itertools.product(*(grid[key] for key in keys)):
            expanded.append(Job(config, dict(zip(keys, values, strict=True)), cpus=cpus, gpus=gpus))
    names = [job.name for job in expanded]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        msg = f"Jobs share a name (and would share a folder): {', '.join(repeated)}. Give them distinct names."
        raise ValueError(msg)
    if not expanded:
        msg = "No jobs: give --jobs, or --config with --grid."
        raise ValueError(msg)
    return expanded


def finished_result(folder: Path) -> dict[str, Any] | None:
    """The result of a job that finished in ``folder`` earlier, or ``None``."""
    path = folder / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def run_job(job: Job, folder: str | Path, export: bool = True, int8: bool = False) -> dict[str, Any]:
    """Train, test and export ``job`` in ``folder``; resume from its last step checkpoint; write ``result.json``.

    Returns the result row. Raises whatever the training raises (bad input fails the job, not the others).
    """
    import torch
    from anomalib.cli import AnomalibCLI

    from ..benchmarking.metrics import evaluator, reported

    folder = Path(folder)
    done = finished_result(folder)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((folder / RUNNING).read_text()) if (folder / RUNNING).is_file() else {}
    attempt, first_started = earlier.get("attempt", 0) + 1, earlier.get("first_started_at", time.time())
    # which process runs the job (an operator's first question when a worker hangs), and how often it started
    (folder / RUNNING).write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "attempt": attempt,
                                              "first_started_at": first_started}))
    if job.cpus >= 1:  # torch's threads = the CPUs reserved for the job (a pooled Ray worker may hold another count)
        torch.set_num_threads(int(job.cpus))
    resume = newest_step_checkpoint(folder)
    resumed_from = int(torch.load(resume, map_location="cpu", weights_only=False)["global_step"]) if resume else 0
    try:
        cli = AnomalibCLI(job.arguments(folder), run=False)
    except SystemExit as stop:  # jsonargparse exits on a bad config; Ray would take that for a dead worker
        msg = (f"Job {job.name}: anomalib cannot parse {job.config} with overrides {job.overrides} "
               f"(its message is in the worker's log).")
        raise ValueError(msg) from stop
    cli.model.evaluator = evaluator()  # anomalib's test metrics and AU-PRO
    started = time.perf_counter()
    cli.engine.fit(model=cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    learning = dict(cli.engine.trainer.callback_metrics)  # what the fit's validation logged (EfficientAdPlugin)
    metrics = cli.engine.test(model=cli.model, datamodule=cli.datamodule)
    minutes = (time.perf_counter() - started) / 60
    ir_path = int8_path = None
    if export:
        from anomalib.deploy import ExportType

        ir_path = cli.engine.export(model=cli.model, export_type=ExportType.OPENVINO, export_root=folder / "export")
        if int8:
            from ..quantization import quantize_openvino

            training_images = [str(path) for path in cli.datamodule.train_data.samples.image_path]
            int8_path = quantize_openvino(ir_path, training_images, folder / "export" / "int8" / "model.xml")
    data = cli.config["train"]["data"]["init_args"]
    result = {
        "job": job.name, "status": "done", "error": None,
        "dataset": type(cli.datamodule).__name__, "root": str(data.get("root")),
        "category": str(data.get("category") or data.get("name") or ""),
        "steps": int(cli.engine.trainer.global_step), "resumed_from_step": resumed_from, "attempt": attempt,
        **reported({**learning, **(metrics[0] if metrics else {})}),
        "fit_minutes": round(minutes, 2), "first_started_at": first_started, "finished_at": time.time(),
        "ir_path": None if ir_path is None else str(ir_path),
        "int8_path": None if int8_path is None else str(int8_path), "job_spec": asdict(job),
    }
    partial = folder / f"{RESULT}.partial"  # a job killed while writing is not taken for finished
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(folder / RESULT)
    return result
