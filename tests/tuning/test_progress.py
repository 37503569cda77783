"""Progress of driver-side Ray tasks reaches the console, with the time left."""

from __future__ import annotations

import time

from carclf.progress import ProgressFile
from tuning.progress import describe_progress, wait_with_progress


def slow_job(progress, steps):
    told = ProgressFile(progress, "building", steps)
    for step in range(1, steps + 1):
        time.sleep(0.6)
        told.update(step)
    return "built"


def test_the_estimate_scales_the_time_so_far():
    assert describe_progress({"what": "x", "done": 2, "total": 6, "elapsed_s": 10.0}) == "x: 2/6, 10 s so far, about 20 s left"
    assert describe_progress({"what": "x", "done": 0, "total": 6, "elapsed_s": 1.0}) == "x: 0/6, 1 s so far"


def test_a_ray_task_reports_its_progress_while_the_driver_waits(ray_cluster, tmp_path, capsys):
    progress = tmp_path / ".progress.json"
    task = ray_cluster.remote(num_cpus=1)(slow_job).remote(progress, 4)
    assert wait_with_progress(task, progress, poll_seconds=0.2) == "built"
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("building: ") and "s left" in line for line in lines)
    assert not progress.exists()  # removed once the task is done
