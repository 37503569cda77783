"""A real two-node Ray cluster on this machine, joined by the search with `--address`: one whose nodes see the same
files, one whose second node has a cache of its own, and one whose second node sees none of the test's files (each
hidden folder under an empty tmpfs in the node's own mount namespace)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import BACKBONE_CACHE
from tests.tuning.helpers import run, search_command

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Ray's `ray start --head` turns token authentication on; whoever joins must use the token too.
CLUSTER_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_AUTH_MODE": "token"}


def _start(arguments: list[str], log: Path, hidden: tuple[Path, ...] = ()) -> subprocess.Popen:
    """`ray start ... --block`: the node lives as long as this process, which stops only its own Ray processes. With
    `hidden` folders, the node runs in its own mount namespace with an empty tmpfs over each, so it sees none of their
    files."""
    command = [RAY, "start", *arguments, "--block"]
    if hidden:
        mounts = " && ".join(f"mount -t tmpfs hidden '{folder}'" for folder in hidden)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "node", *command]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=CLUSTER_ENV, start_new_session=True)


def _wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{address}', log_to_driver=False); "
                                "print(sum(n['Alive'] for n in ray.nodes()))"], capture_output=True, text=True, timeout=60,
                               env=CLUSTER_ENV)
        if probe.returncode == 0 and probe.stdout.strip().splitlines()[-1] == str(count):
            return
        time.sleep(2)
    raise AssertionError(f"the {count}-node cluster at {address} did not come up")


def _cluster(tmp_path: Path, hidden: tuple[Path, ...] = (), second_cpus: int = 1):
    """A head node with 1 CPU and a second node with `second_cpus` of its own, started here and stopped here only.

    Never `ray stop`: that would stop every Ray cluster of this user, not just this test's.
    """
    address = f"127.0.0.1:{_free_port()}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes = [_start(["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", "--num-cpus=1", *common],
                    tmp_path / "head.log")]
    try:
        _wait_for_nodes(address, 1)
        nodes.append(_start([f"--address={address}", f"--num-cpus={second_cpus}", *common], tmp_path / "worker.log", hidden))
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):  # --block stops its node's processes when interrupted
            node.send_signal(signal.SIGINT)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)


@pytest.fixture
def two_node_cluster(tmp_path):
    yield from _cluster(tmp_path)


def _require_mount_namespaces(folder: Path) -> None:
    """Hiding folders from a node needs root and `unshare --mount`, as in CI; the test is skipped, saying so, without them."""
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs hidden '{folder}'"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"a node that does not see the test's files needs root and a mount namespace (unshare --mount): "
                    f"{probe.stderr.strip()}")


@pytest.fixture
def cluster_with_a_node_that_sees_no_test_file(tmp_path, tmp_path_factory):
    """The second node cannot see pytest's temporary folders (the dataset, the cache, the runs)."""
    _require_mount_namespaces(tmp_path_factory.getbasetemp())
    yield from _cluster(tmp_path, (tmp_path_factory.getbasetemp(),))


@pytest.fixture
def cluster_whose_second_node_has_its_own_cache(tmp_path):
    """The second node sees the run folder (a shared filesystem) but neither the search's cache (`tmp_path/cache`) nor
    the test runs' cache home, where the synthetic backbone is: a cloud node with its own disk, and the node with the
    most CPUs (2), so the work done once (a whole node's CPUs) can only run there."""
    hidden = (tmp_path / "cache", Path(BACKBONE_CACHE))
    for folder in hidden:
        folder.mkdir(parents=True, exist_ok=True)
    _require_mount_namespaces(hidden[0])
    yield from _cluster(tmp_path, hidden, second_cpus=2)


@pytest.mark.slow
def test_search_runs_trials_on_both_nodes_into_one_storage_path(two_node_cluster, tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "cluster", "--address", two_node_cluster, "--num-samples", "2",
                                "--max-concurrent", "2", "--cpus-per-trial", "1", "--set", "scheduler.max_epochs=2",
                                "--set", "scheduler.grace_period=2", "--set", "search.space.head_epochs={ choice = [0, 1] }",
                                "--no-retrain"), env=CLUSTER_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert trials["trial_id"].nunique() == 2
    assert trials["node_id"].nunique() == 2  # both nodes trained trials
    for path in trials["trial_path"].unique():
        assert Path(path).parent == tmp_path / "cluster"  # one storage path for every trial
        assert list(Path(path).glob("checkpoint_*"))


@pytest.mark.slow
def test_a_node_that_does_not_see_the_run_folder_is_refused_before_the_first_trial(cluster_with_a_node_that_sees_no_test_file,
                                                                                  tiny_cars, tmp_path):
    """The run folder is on this machine's disk, which the second node does not see: the search is refused before any
    trial, naming the key and the way out, and the same command would start the run again (nothing of Ray's is there)."""
    result = run(search_command(tiny_cars, tmp_path, "unshared", "--address", cluster_with_a_node_that_sees_no_test_file,
                                "--num-samples", "2", "--cpus-per-trial", "1", "--set", "scheduler.max_epochs=2",
                                "--set", "scheduler.grace_period=2", "--set", "search.space.head_epochs={ choice = [0, 1] }",
                                "--no-retrain"), env=CLUSTER_ENV)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(rf"error: run\.storage_path {tmp_path / 'unshared'}: the node at \S+ \(node id \w+\) does not see "
                     "the files this machine writes there", result.stderr), result.stderr[-3000:]
    assert "NFS" in result.stderr and "No trial ran: the same command starts the run again" in result.stderr
    assert not list((tmp_path / "unshared").glob("CarClassifierTrainable_*")) and not list(tmp_path.rglob(".carclf-node-check-*"))


@pytest.mark.slow
def test_a_node_with_its_own_cache_gets_the_data_through_ray(cluster_whose_second_node_has_its_own_cache, tiny_cars,
                                                              synthetic_backbone, tmp_path):
    """The store, the synthetic backbone's weights and the cached features reach the node that cannot see the driver's
    cache through Ray's object store, and what the work done once builds there (the features, the transfer probe)
    comes back into the driver's cache: trials run on both nodes, the features, probe and retraining run on the second
    (the only node with 2 CPUs), and the winner is delivered."""
    result = run(search_command(tiny_cars, tmp_path, "own-cache", "--address", cluster_whose_second_node_has_its_own_cache,
                                "--num-samples", "3", "--max-concurrent", "3", "--cpus-per-trial", "1",
                                "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=2",
                                "--set", "search.space.head_epochs={ choice = [0, 1] }", weights=str(synthetic_backbone)),
                 env=CLUSTER_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "own-cache" / "trials.parquet")
    assert trials["node_id"].nunique() == 2  # both nodes trained trials
    for kind in ("features", "probes"):  # built on the second node, kept in the driver's cache
        assert len(list((tmp_path / "cache" / kind).glob("*/manifest.json"))) == 1, kind
    assert (tmp_path / "own-cache" / "best" / "model.keras").is_file()

