"""The work done once per search before the trials, each as a Ray task with a whole node (all its CPUs, a whole GPU).

The driver never touches a GPU (docs/gpus-and-backends.md): pretraining carclf's synthetic backbone, computing
the cached head features and probing whether the pretrained backbone helps run as Ray tasks,
while the driver prints their progress (`tuning.progress`). Each task gets the driver's files it
reads through Ray where its node does not share the driver's disk, and returns the cache entry it
built the same way (`tuning.shipping`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import ray

from carclf.features import build_head_features, cached_head_features, can_cache_features, feature_entry
from carclf.files import read_json, write_json
from carclf.pretrained import backbone_entry, build_synthetic_backbone
from carclf.probe import cached_probe, probe_entry, probe_transfer_cached
from carclf.weights import resolve_weights
from tuning.cluster import whole_node_cpus
from tuning.experiment import Experiment
from tuning.progress import wait_with_progress
from tuning.run_folder import RunFolder
from tuning.shipping import Shipment, on_node, returned

logger = logging.getLogger("tuning.search")


def whole_node(experiment: Experiment) -> dict[str, Any]:
    """Ray task options for work done once: all the CPUs of the largest node and, where trials use GPUs, a whole GPU.

    This work runs while no trial does (before the search, and retraining after it), so it takes the
    machine: asking for one trial's CPUs left the rest idle, and Ray caps such a task's threads
    (`OMP_NUM_THREADS`) at the CPUs it asked for. JAX gets the whole card's memory, not one trial's share.
    """
    gpus = 1 if experiment.resources.gpus_per_trial > 0 else 0
    environment = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}
    return {"num_cpus": whole_node_cpus(gpus), "num_gpus": gpus, "runtime_env": {"env_vars": environment}}


def whole_node_task(function, experiment: Experiment):
    """`function` as a Ray task with a whole node (`whole_node`)."""
    return ray.remote(**whole_node(experiment))(function)


def resolve_backbone(experiment: Experiment, shipment: Shipment) -> Experiment:
    """The experiment with `model.weights` as a file: ImageNet fetched here, the synthetic backbone built as a task (and
    brought back into the driver's cache where `shipment` says the driver does not see the task's)."""
    progress = RunFolder(experiment.run_dir).progress_file

    def build(settings):
        print("pretraining carclf's synthetic backbone once (it is cached for later searches) ...", flush=True)
        task = whole_node_task(on_node, experiment).remote(build_synthetic_backbone, shipment, backbone_entry(settings).folder,
                                                           settings, None, progress)
        return returned(wait_with_progress(task, progress))

    return experiment.with_settings(resolve_weights(experiment.settings, build))


def head_epochs_possible(experiment: Experiment) -> bool:
    """Whether some trial may train its head alone (depth 0, or a first head-only phase)."""
    return 0 in experiment.possible_values("unfreeze_depth") or any(v > 0 for v in experiment.possible_values("head_epochs"))


def prepare_head_features(experiment: Experiment, index: pd.DataFrame, store: Path, inputs: Shipment) -> str | None:
    """The cached frozen features for head-only epochs, computed once (None when no trial can use them); `inputs`
    ships the store and the weights to the task's node."""
    settings = experiment.trial_settings()
    if not can_cache_features(settings) or not head_epochs_possible(experiment):
        return None
    cached = cached_head_features(index, store, settings)  # checked here: no task, no Keras
    if cached is not None:
        return str(cached)
    print(f"computing frozen backbone features once ({settings.train.feature_views} augmented views) for head-only epochs ...", flush=True)
    progress = RunFolder(experiment.run_dir).progress_file
    task = whole_node_task(on_node, experiment).remote(build_head_features, inputs, feature_entry(index, store, settings).folder,
                                                       index, store, settings, progress)
    return str(returned(wait_with_progress(task, progress)))


def transfer_probe(experiment: Experiment, index: pd.DataFrame, store: Path, inputs: Shipment) -> dict[str, Any] | None:
    """The linear probe of the pretrained backbone against random weights (`carclf.probe`), computed once per run
    (`transfer.json`) and said on the console, with a warning when the pretrained features are not clearly better
    than random ones; None for random weights. `inputs` ships the store and the weights to the task's node."""
    if not experiment.settings.model.pretrained:
        return None
    saved = RunFolder(experiment.run_dir).transfer_file
    if saved.is_file():
        return read_json(saved)
    settings = experiment.trial_settings()
    probe = cached_probe(index, store, settings)  # checked here: no task, no Keras
    if probe is None:
        print("probing the pretrained backbone's frozen features against random weights ...", flush=True)
        task = whole_node_task(on_node, experiment).remote(probe_transfer_cached, inputs, probe_entry(index, store, settings).folder,
                                                           index, store, settings)
        probe = returned(ray.get(task))
    print(probe.describe(), flush=True)
    if probe.verdict != "better":
        logger.warning("model.weights = %r: the pretrained backbone's frozen features are %s than random weights' on this data (%s); "
                       "head-only and shallow trials may be wasted: consider other weights, or a space of deeper unfreeze_depth",
                       experiment.settings.model.weights, "no better" if probe.verdict == "not better" else "not clearly better",
                       probe.describe())
    write_json(saved, probe.to_dict())
    return probe.to_dict()
