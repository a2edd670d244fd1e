"""efficientad-train-many on a real local Ray instance: jobs in parallel, a killed worker resumed, a bad job alone.

The command runs as a subprocess (its own local Ray, loopback only); the test kills one job's worker process once
that job has written a step checkpoint, as a machine failure would.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a real local Ray instance and three small training jobs: about two minutes

STEPS, EVERY = 4, 2


def _command(jobs_file: Path, log: Path) -> subprocess.Popen:
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "efficientad_plugin.cli.train_many", "--config_file",
                             str(jobs_file)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=environment)


def _kill_when_checkpointed(folder: Path, process: subprocess.Popen, log: Path) -> int:
    """SIGKILL the worker running the job in ``folder`` once its first step checkpoint exists; its pid."""
    deadline = time.monotonic() + 600
    while not list(folder.rglob("last_step.ckpt")):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    pid = json.loads((folder / "running.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_parallel_jobs_export_a_killed_job_resumes_and_a_broken_job_fails_alone(
        synthetic_root: Path, teacher_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_root / "synthetic", broken / "synthetic")
    truncated = sorted((broken / "synthetic" / "train" / "good").iterdir())[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"class_path": "EfficientAdPlugin", "init_args": {
            "teacher_weights": str(teacher_file), "penalty_dir": None, "max_steps": STEPS,
            "checkpoint_every_n_steps": EVERY}},
        "data": {"class_path": "MVTecAD", "init_args": {
            "root": str(synthetic_root), "category": "synthetic", "train_batch_size": 1, "eval_batch_size": 4,
            "num_workers": 0, "val_split_mode": "from_train", "val_split_ratio": 0.2, "seed": 0}},
        "trainer": {"logger": False, "enable_progress_bar": False}}))
    output = tmp_path / "out"
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(yaml.safe_dump({
        "base_config": str(base), "grid": {"seed_everything": [0, 1]}, "num_cpus": 2, "output": str(output),
        "jobs": [{"config": str(base), "name": "broken", "overrides": {"data.init_args.root": str(broken)}}]}))
    log = tmp_path / "run.log"

    process = _command(jobs_file, log)
    killed = _kill_when_checkpointed(output / "jobs" / "base_seed_everything=1", process, log)
    assert process.wait(timeout=900) == 1, log.read_text()[-3000:]  # one job failed

    rows = {row["job"]: row for row in csv.DictReader((output / "results.csv").open())}
    first, resumed, bad = rows["base_seed_everything=0"], rows["base_seed_everything=1"], rows["broken"]
    for row in (first, resumed):
        assert row["status"] == "done" and int(row["steps"]) == STEPS
        assert Path(row["ir_path"]).with_suffix(".xml").is_file() or Path(row["ir_path"]).is_file()
        assert 0 <= float(row["image_AUROC"]) <= 1 and row["pixel_AUPRO"]
    assert (first["attempt"], first["resumed_from_step"]) == ("1", "0")
    # the killed job was started again and continued from its step checkpoint, not from step 0
    assert resumed["attempt"] == "2" and int(resumed["resumed_from_step"]) in range(EVERY, STEPS, EVERY)
    assert json.loads((output / "jobs" / "base_seed_everything=1" / "running.json").read_text())["pid"] != killed
    assert bad["status"] == "failed" and "ImageReadError" in bad["error"] and truncated.name in bad["error"]
    # the two jobs ran side by side on the two CPUs
    results = [json.loads((output / "jobs" / name / "result.json").read_text())
               for name in ("base_seed_everything=0", "base_seed_everything=1")]
    assert max(result["first_started_at"] for result in results) < min(result["finished_at"] for result in results)
    assert "| base_seed_everything=0 | done |" in (output / "results.md").read_text()

    finished = (output / "jobs" / "base_seed_everything=0" / "result.json").stat().st_mtime_ns
    assert _command(jobs_file, log).wait(timeout=600) == 1  # the broken job fails again; the others are skipped
    rows = {row["job"]: row for row in csv.DictReader((output / "results.csv").open())}
    assert rows["base_seed_everything=0"]["status"] == rows["base_seed_everything=1"]["status"] == "done (earlier run)"
    assert (output / "jobs" / "base_seed_everything=0" / "result.json").stat().st_mtime_ns == finished
