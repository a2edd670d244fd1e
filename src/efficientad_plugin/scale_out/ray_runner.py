"""Run jobs as Ray tasks on a local Ray instance or an existing cluster; collect one results table.

Ray retries a task whose worker died (``max_retries``), and the job resumes from its step checkpoint; an exception
in a job (bad input) is not retried and fails that job alone. Finished jobs (``result.json``) are not run again.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .jobs import Job, finished_result, run_job

logger = logging.getLogger(__name__)

COLUMNS = ("job", "status", "dataset", "category", "steps", "image_AUROC", "pixel_AUROC", "pixel_AUPRO",
           "fit_minutes", "attempt", "resumed_from_step", "ir_path", "error")
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # results are small JSON rows; Ray's default takes 30 % of the RAM


def job_folder(output: Path, job: Job) -> Path:
    """Where ``job`` writes its anomalib results, export and ``result.json``."""
    return output / "jobs" / job.name


def run_jobs(jobs: Sequence[Job], output: str | Path, address: str | None = None, num_cpus: int | None = None,
             export: bool = True, int8: bool = False, max_retries: int = 3,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run ``jobs`` (train, test, export each) as Ray tasks; write ``results.csv`` and ``results.md``; return rows.

    Args:
        jobs: the jobs; each asks Ray for its ``cpus`` and ``gpus``.
        output: the results folder (shared storage on a cluster: every worker writes its job's folder there).
        address: an existing cluster (``ray://host:10001`` or ``auto``); ``None`` starts a local instance.
        num_cpus: CPUs of the local instance (``None``: all).
        export: write the OpenVINO IR of each model.
        int8: also write an INT8 copy (NNCF, calibrated on the job's training images).
        max_retries: how often a job whose worker died is started again (from its step checkpoint).
        progress: show a progress bar with jobs done, running and failed.
    """
    import ray
    from tqdm import tqdm

    output = Path(output).resolve()
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished_result(job_folder(output, job))
        if done is None:
            todo.append(job)
        else:
            rows[job.name] = {**done, "status": "done (earlier run)"}
    if todo and not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus, "object_store_memory": OBJECT_STORE_BYTES}
        ray.init(address=address, include_dashboard=False, **local)
    task = ray.remote(run_job)
    pending = {
        task.options(num_cpus=job.cpus, num_gpus=job.gpus, max_retries=max_retries, retry_exceptions=False,
                     name=job.name).remote(job, str(job_folder(output, job)), export, int8): job
        for job in todo}
    failed = 0
    with tqdm(total=len(jobs), initial=len(rows), desc="jobs", disable=not progress, unit="job") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                rows[job.name] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:  # the job raised: bad input, not retried
                failed += 1
                rows[job.name] = _failure(job, f"{type(error.cause).__name__}: {error.cause}")
            except ray.exceptions.RayError as error:  # its worker died more often than max_retries allows
                failed += 1
                rows[job.name] = _failure(job, f"{type(error).__name__}: {str(error).splitlines()[0]}")
            bar.update(1)
            bar.set_postfix(done=len(rows) - failed, running=len(pending), failed=failed)
            logger.info("job %s: %s", job.name, rows[job.name]["status"])
    ordered = [rows[job.name] for job in jobs]
    write_tables(ordered, output)
    return ordered


def _failure(job: Job, error: str) -> dict[str, Any]:
    return {"job": job.name, "status": "failed", "error": error.strip()[:500]}


def write_tables(rows: Sequence[dict[str, Any]], output: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md`` in ``output``, one row per job."""
    output.mkdir(parents=True, exist_ok=True)
    csv_path, markdown_path = output / "results.csv", output / "results.md"
    with csv_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in COLUMNS) + " |" for row in rows]
    markdown_path.write_text("\n".join(lines) + "\n")
    return csv_path, markdown_path


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")
