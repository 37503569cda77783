"""Work done once (backbone, features, probe, retraining) takes a whole node while no trial runs."""

from __future__ import annotations

import os

from tuning.driver_tasks import whole_node_task
from tuning.experiment import load_experiment


def threads_and_cpus():
    import ray

    return os.environ.get("OMP_NUM_THREADS"), ray.get_runtime_context().get_assigned_resources().get("CPU")


def test_work_done_once_gets_every_cpu_of_the_node_not_one_trials_share(ray_cluster):
    experiment = load_experiment(overrides=["resources.cpus_per_trial=1", "resources.gpus_per_trial=0"])
    threads, cpus = ray_cluster.get(whole_node_task(threads_and_cpus, experiment).remote())
    assert cpus == 2  # the fixture's cluster has 2 CPUs; a trial asks for 1
    assert threads == "2"  # Ray caps a task's threads at the CPUs it asked for
