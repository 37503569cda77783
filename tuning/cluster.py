"""The Ray cluster a search runs on: a local one of its own, or one it joins with `--address`.

Resources are checked against the live cluster before any long work, so a trial that no node can
host is an error at once instead of a trial pending forever; and on a cluster of several nodes,
every node must see a local run folder where the driver does (`nodes_not_seeing`, `require_seen`;
a run on object storage reaches every node through Ray: `tuning.run_storage`);
the cache reaches the nodes that do not see it through Ray (`tuning.shipping`).
"""

from __future__ import annotations

import argparse
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import keras
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from carclf.files import cache_folder
from carclf.runtime import trial_environment
from tuning.errors import SearchError
from tuning.experiment import Experiment

logger = logging.getLogger("tuning.search")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_exposed(args: argparse.Namespace) -> None:
    """A local dashboard bound beyond this machine lets whoever reaches it run code here."""
    if not args.address and args.dashboard_host not in LOOPBACK:
        logger.warning("the Ray dashboard will listen on %s: anyone who reaches it with the cluster's token (~/.ray/auth_token) "
                       "can run code here, and the token crosses the network unencrypted; prefer an SSH tunnel to 127.0.0.1",
                       args.dashboard_host)


def check_local_cluster(args: argparse.Namespace, experiment: Experiment) -> None:
    """Before Ray starts: a local cluster of `--num-cpus` CPUs must be able to host one trial."""
    cpus = experiment.resources.cpus_per_trial
    if not args.address and args.num_cpus is not None and args.num_cpus < cpus:
        raise SearchError(f"--num-cpus {args.num_cpus} cannot host one trial of resources.cpus_per_trial {cpus:g}: "
                          f"raise --num-cpus to {math.ceil(cpus)} or more, or lower --cpus-per-trial")


def start_ray(args: argparse.Namespace, experiment: Experiment) -> None:
    """Start a local cluster with the dashboard on `--dashboard-host`, or join `--address`.

    Trial processes get the driver's Keras backend, their GPU memory share and the persistent
    compilation cache through the job's environment (`carclf.runtime.trial_environment`). The
    dashboard alone is given up when Ray's error is about it; any other failure to start or join
    is a `SearchError` that says so. A local cluster too small for one trial is refused first.
    """
    check_local_cluster(args, experiment)
    compile_cache = cache_folder(experiment.settings.data.cache_dir, "compilation")
    environment = trial_environment(keras.backend.backend(), experiment.resources.gpus_per_trial, compile_cache)
    runtime_env = {"env_vars": environment}
    try:
        if args.address:
            context = ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
        else:
            # address="local": always a cluster of our own, never a `ray start` cluster found on this machine
            options = dict(address="local", num_cpus=args.num_cpus, runtime_env=runtime_env, log_to_driver=False)
            try:
                context = ray.init(include_dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host, **options)
            except Exception as error:  # the dashboard's extra packages are missing, or it failed: go on without it
                if args.no_dashboard or "dashboard" not in str(error).lower():
                    raise
                logger.warning("Ray's dashboard could not start (%s); running without it", error)
                ray.shutdown()
                context = ray.init(include_dashboard=False, **options)
    except Exception as error:  # Ray raises Exception, TimeoutError, ConnectionError, OSError...
        ray.shutdown()
        cluster = f"could not join the Ray cluster at {args.address}" if args.address else "Ray's local cluster did not start"
        raise SearchError(f"{cluster}: {error}; no trial ran: the same command starts the run again") from None
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def check_cluster_resources(experiment: Experiment) -> None:
    """Stop at once if no node can ever host one trial, instead of leaving trials pending forever."""
    resources = experiment.resources
    nodes = live_nodes()
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    if resources.gpus_per_trial > most_gpus:
        raise SearchError(
            f"resources.gpus_per_trial is {resources.gpus_per_trial} but no node of this Ray cluster has "
            f"{'any GPU' if most_gpus == 0 else f'more than {most_gpus}'}; run on CPU with --gpus-per-trial 0 "
            "(or --set resources.gpus_per_trial=0)"
        )
    if resources.cpus_per_trial > most_cpus:
        raise SearchError(f"resources.cpus_per_trial is {resources.cpus_per_trial} but the largest node has {most_cpus} CPUs; "
                          "lower --cpus-per-trial")


def nodes_not_seeing(folders: dict[str, Path], seconds: float = 300) -> dict[str, list[dict[str, Any]]]:
    """For each folder (`folders`: the experiment key that sets it → the folder), the live nodes that do not see the
    files this machine writes there; on one node, none.

    Each folder gets a marker file holding a fresh token, and a task pinned to every live node reads
    the markers back; the markers are removed."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) < 2:
        return {key: [] for key in folders}
    token = uuid.uuid4().hex
    markers = {key: str(folder / f".carclf-node-check-{token}") for key, folder in folders.items()}
    for marker in markers.values():
        Path(marker).write_text(token)
    try:
        probe = ray.remote(num_cpus=0)(unseen_markers)
        probes = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            markers, token) for node in nodes]
        unseen = [ray.get(reference, timeout=seconds) for reference in probes]
    finally:
        for marker in markers.values():
            Path(marker).unlink(missing_ok=True)
    return {key: [node for node, keys in zip(nodes, unseen) if key in keys] for key in folders}


def require_seen(key: str, folder: Path, unseen: list[dict[str, Any]]) -> None:
    """Refuse, before the first trial, a run folder that some node does not see (`unseen`, from `nodes_not_seeing`):
    trials and the retraining write into it by the driver's path, on whichever node they land (Ray's checkpoints,
    the best model)."""
    if unseen:
        node = unseen[0]
        raise SearchError(
            f"{key} {folder}: the node at {node['NodeManagerAddress']} (node id {node['NodeID'][:8]}) does not see the files "
            "this machine writes there, and trials open it by this path on every node of the cluster. Put it on a filesystem "
            "that every node mounts at the same path (NFS, EFS, Lustre: for example --storage-path /shared/runs), or run on "
            "one machine without --address; or keep the run on object storage (--storage-path s3://bucket/runs, docs/clusters.md). "
            "No trial ran: the same command starts the run again")


def unseen_markers(markers: dict[str, str], token: str) -> list[str]:
    """Run on one node: the keys whose marker file is missing there or does not hold `token`."""
    unseen = []
    for key, marker in markers.items():
        try:
            seen = Path(marker).read_text() == token
        except OSError:
            seen = False
        if not seen:
            unseen.append(key)
    return unseen


def live_nodes() -> list[dict[str, float]]:
    """Each live node's total resources (`CPU`, `GPU`, custom ones), from Ray's public node table."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def whole_node_cpus(gpus: int) -> int:
    """The CPUs of the largest live node that has `gpus` GPUs: what work done once, while no trial runs, may take."""
    able = [node.get("CPU", 0) for node in live_nodes() if node.get("GPU", 0) >= gpus]
    return max(1, int(max(able, default=1)))


def trial_slots(experiment: Experiment) -> int:
    """How many trials this cluster can run at once: `search.max_concurrent`, or fewer where its CPUs or GPUs run out."""
    resources, cluster = experiment.resources, ray.cluster_resources()
    slots = [experiment.search.max_concurrent, int(cluster.get("CPU", 0) // resources.cpus_per_trial)]
    if resources.gpus_per_trial:
        slots.append(int(cluster.get("GPU", 0) // resources.gpus_per_trial))
    return max(1, min(slots))
