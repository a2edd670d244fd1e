"""Train, test and export one model per job on a Ray cluster (or a local Ray instance): many products at once.

A job is an anomalib config plus overrides in its dotted keys; a grid makes one job per combination. Each job
writes its folder under <output>/jobs/<name> as `anomalib train` would, plus the OpenVINO IR; the command writes
<output>/results.csv and results.md and exits with 1 if any job failed. Rerun it to skip finished jobs; a job
whose worker died resumes from its last step checkpoint.

example (a YAML with these keys, or flags):
  efficientad-train-many --config_file jobs.yaml
  efficientad-train-many --base_config configs/pcb_quickstart.yaml \\
      --grid '{"seed_everything": [0, 1, 2, 3]}' --output results/many --address auto
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from efficientad_plugin.cli import console_command


def train_many(jobs: list[dict[str, Any]] | None = None, base_config: str | None = None,
               grid: dict[str, list[Any]] | None = None, output: Path = Path("results/many"),
               address: str | None = None, num_cpus: int | None = None, cpus_per_job: float = 1.0,
               gpus_per_job: float = 0.0, export: bool = True, int8: bool = False, max_retries: int = 3) -> int:
    """Run the jobs; return 0 when all finished, 1 when any failed.

    Args:
        jobs: jobs as {config, overrides, name, cpus, gpus}; overrides e.g. {"model.init_args.max_steps": 1000}.
        base_config: the anomalib config that the grid's points override.
        grid: dotted key -> values; one job per combination.
        output: results folder (on shared storage when the cluster has several machines).
        address: an existing Ray cluster ("auto", "ray://head:10001"); none starts a local instance.
        num_cpus: CPUs of the local instance (all by default).
        cpus_per_job: CPUs Ray reserves per job (its torch threads).
        gpus_per_job: GPUs (or a fraction) Ray reserves per job.
        export: write each model's OpenVINO IR.
        int8: also write an INT8 IR (NNCF, calibrated on the job's training images).
        max_retries: restarts of a job whose worker died (each from its step checkpoint).
    """
    from efficientad_plugin.scale_out import expand_jobs, run_jobs

    expanded = expand_jobs(jobs or [], base_config, grid, cpus=cpus_per_job, gpus=gpus_per_job)
    rows = run_jobs(expanded, output, address=address, num_cpus=num_cpus, export=export, int8=int8,
                    max_retries=max_retries)
    failed = [row["job"] for row in rows if row["status"] == "failed"]
    print((Path(output) / "results.md").read_text())
    if failed:
        print(f"{len(failed)} of {len(rows)} jobs failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> object:
    """Parse the arguments (flags or --config_file) and run the jobs."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config_file", action=ActionConfigFile, help="a YAML with the arguments below")
    parser.add_function_arguments(train_many)
    arguments = parser.parse_args(argv)
    arguments.pop("config_file", None)
    return train_many(**arguments.as_dict())


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
