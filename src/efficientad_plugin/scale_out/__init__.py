"""Many products, many machines: one model per job (anomalib config + overrides), run as Ray tasks.

``jobs`` holds what a job is and what it does on a worker (train, test, export, resume from its step checkpoint);
``ray_runner`` fans the jobs out on a local Ray instance or a cluster and writes the results table. Ray is
imported only by ``run_jobs`` (the ``ray`` extra).
"""

from .jobs import Job, expand_jobs, run_job
from .ray_runner import run_jobs, write_tables

__all__ = ["Job", "expand_jobs", "run_job", "run_jobs", "write_tables"]
