"""Jobs: names, grids, and the anomalib train arguments a job turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientad_plugin.callbacks import newest_step_checkpoint
from efficientad_plugin.scale_out import Job, expand_jobs


def test_a_grid_makes_one_job_per_combination_with_distinct_names() -> None:
    jobs = expand_jobs([{"config": "a.yaml", "name": "listed"}], "base.yaml",
                       {"data.init_args.category": ["bottle", "screw"], "seed_everything": [0, 1]}, cpus=2)
    assert [job.name for job in jobs] == ["listed", "base_category=bottle_seed_everything=0",
                                          "base_category=bottle_seed_everything=1",
                                          "base_category=screw_seed_everything=0",
                                          "base_category=screw_seed_everything=1"]
    assert jobs[3].overrides == {"data.init_args.category": "screw", "seed_everything": 0}
    assert all(job.cpus == 2 for job in jobs)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"jobs": [{"config": "a.yaml", "name": "x"}, {"config": "b.yaml", "name": "x"}]}, "share a name"),
    ({"grid": {"seed_everything": [0]}}, "needs --config"),
    ({}, "No jobs"),
])
def test_bad_job_lists_are_refused_by_name(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_jobs(**arguments)


def test_overrides_become_anomalib_flags_and_the_job_folder_is_the_results_root(tmp_path: Path) -> None:
    job = Job("configs/pcb_quickstart.yaml", {"model.init_args.max_steps": 5, "data.init_args.root": "/data/x y"})
    assert job.name == "pcb_quickstart_root=-data-x-y_max_steps=5"  # safe as a folder name
    assert job.arguments(tmp_path) == ["train", "--config", "configs/pcb_quickstart.yaml",
                                       "--model.init_args.max_steps", "5", "--data.init_args.root", "/data/x y",
                                       "--default_root_dir", str(tmp_path)]


def test_the_step_checkpoint_trained_furthest_of_any_run_version_is_resumed(tmp_path: Path) -> None:
    import os

    import torch

    assert newest_step_checkpoint(tmp_path) is None
    old, new = tmp_path / "v0" / "last_step.ckpt", tmp_path / "v1" / "last_step.ckpt"
    for step, path in ((10, old), (20, new)):
        path.parent.mkdir()
        torch.save({"global_step": step}, path)
    os.utime(new, (1000, 1000))  # older on disk (a copy without -t): the step decides, not the time
    assert newest_step_checkpoint(tmp_path) == new
