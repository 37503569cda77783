"""A real two-node Ray cluster on this machine, joined by the search with `--address`: one whose nodes see the same
files, one whose second node has a cache of its own, and one whose second node sees none of the test's files (each
hidden folder under an empty tmpfs in the node's own mount namespace), refused with a local run folder and run with
the run on object storage (an S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from carclf.object_storage import listing, read_text
from tests.conftest import BACKBONE_CACHE
from tests.tuning.helpers import run, saved_trials, search_command
from tuning.run_storage import RunPlace

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """This process's environment as it is now (a test's object-storage settings included), with token authentication,
    which Ray's `ray start --head` turns on: whoever joins must use the token too."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_AUTH_MODE": "token"}


def _start(arguments: list[str], log: Path, hidden: tuple[Path, ...] = ()) -> subprocess.Popen:
    """`ray start ... --block`: the node lives as long as this process, which stops only its own Ray processes. With
    `hidden` folders, the node runs in its own mount namespace with an empty tmpfs over each, so it sees none of their
    files."""
    command = [RAY, "start", *arguments, "--block"]
    if hidden:
        mounts = " && ".join(f"mount -t tmpfs hidden '{folder}'" for folder in hidden)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "node", *command]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=cluster_env(), start_new_session=True)


def _wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{address}', log_to_driver=False); "
                                "print(sum(n['Alive'] for n in ray.nodes()))"], capture_output=True, text=True, timeout=60,
                               env=cluster_env())
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
def cluster_sharing_no_files_with_a_bucket(tmp_path, tmp_path_factory, s3_bucket):
    """A bucket (`s3_bucket`, whose settings every node's environment holds), and a cluster whose second node sees none
    of the test's files, its cache home included (the synthetic backbone, the run's mirror), and is the node with the
    most CPUs (2), so the work done once (a whole node's CPUs) can only run there."""
    hidden = (tmp_path_factory.getbasetemp(), Path(BACKBONE_CACHE))
    _require_mount_namespaces(hidden[0])
    for address in _cluster(tmp_path, hidden, second_cpus=2):
        yield address, s3_bucket


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
                                "--no-retrain"), env=cluster_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert trials["trial_id"].nunique() == 2
    assert trials["node_id"].nunique() == 2  # both nodes trained trials
    for path in trials["trial_path"].unique():
        assert Path(path).parent == tmp_path / "cluster" / "ray"  # one storage path for every trial, in the run's Ray folder
        assert list(Path(path).glob("checkpoint_*"))


@pytest.mark.slow
def test_a_node_that_does_not_see_the_run_folder_is_refused_before_the_first_trial(cluster_with_a_node_that_sees_no_test_file,
                                                                                  tiny_cars, tmp_path):
    """The run folder is on this machine's disk, which the second node does not see: the search is refused before any
    trial, naming the key and the way out, and the same command would start the run again (nothing of Ray's is there)."""
    result = run(search_command(tiny_cars, tmp_path, "unshared", "--address", cluster_with_a_node_that_sees_no_test_file,
                                "--num-samples", "2", "--cpus-per-trial", "1", "--set", "scheduler.max_epochs=2",
                                "--set", "scheduler.grace_period=2", "--set", "search.space.head_epochs={ choice = [0, 1] }",
                                "--no-retrain"), env=cluster_env())
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(rf"error: run\.storage_path {tmp_path / 'unshared'}: the node at \S+ \(node id \w+\) does not see "
                     "the files this machine writes there", result.stderr), result.stderr[-3000:]
    assert "NFS" in result.stderr and "No trial ran: the same command starts the run again" in result.stderr
    assert not list((tmp_path / "unshared").rglob("CarClassifierTrainable_*")) and not list(tmp_path.rglob(".carclf-node-check-*"))


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
                 env=cluster_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "own-cache" / "trials.parquet")
    assert trials["node_id"].nunique() == 2  # both nodes trained trials
    for kind in ("features", "probes"):  # built on the second node, kept in the driver's cache
        assert len(list((tmp_path / "cache" / kind).glob("*/manifest.json"))) == 1, kind
    assert (tmp_path / "own-cache" / "best" / "model.keras").is_file()



@pytest.mark.slow
def test_a_cluster_sharing_no_files_runs_resumes_and_delivers_on_object_storage(cluster_sharing_no_files_with_a_bucket, tiny_cars,
                                                                              synthetic_backbone, tmp_path):
    """Nodes that share no file, a run on object storage: the search killed (SIGKILL) once a trial finished resumes from
    the URI alone (its mirror gone: another machine), keeping that trial, trials ran on both nodes, the features and the retraining ran
    on the node that sees none of the driver's files, the bucket holds every file of the run, and the report and predict
    read it from there."""
    address, bucket = cluster_sharing_no_files_with_a_bucket
    # 4 trials, 3 at once: three trials running together need the head's CPU beside the second node's two, before the
    # kill and, with three left, after it (with 3 trials, the two left after the kill ran on the second node alone once).
    command = search_command(tiny_cars, tmp_path, "no-shared-files", "--address", address, "--num-samples", "4",
                             "--max-concurrent", "3", "--cpus-per-trial", "1", "--set", "scheduler.max_epochs=2",
                             "--set", "scheduler.grace_period=2", "--set", "search.space.head_epochs={ choice = [0, 1] }",
                             weights=str(synthetic_backbone))
    command[command.index("--storage-path") + 1] = f"{bucket}/runs"
    uri = f"{bucket}/runs/no-shared-files"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    deadline = time.monotonic() + 360
    while not saved_trials(f"{uri}/ray") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    finished, killed_at = saved_trials(f"{uri}/ray"), time.time()  # a checkpoint alone does not make a trial finished
    process.kill()  # SIGKILL: nothing of the driver's gets saved or said; the bucket holds what was pushed and synced
    _, stderr = process.communicate(timeout=60)
    assert finished, f"the search did not get far enough to kill: {stderr[-3000:]}"

    shutil.rmtree(RunPlace.at(uri).local)  # only the bucket holds the run
    result = run([*command, "--resume", uri], timeout=600, env=cluster_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(RunPlace.at(uri).local / "trials.parquet")
    reported = [json.loads(line) for name in listing(f"{uri}/ray") if name.endswith("/result.json")
                for line in read_text(f"{uri}/ray/{name}").splitlines()]  # every epoch reported, a restarted trial's twice
    assert trials["trial_id"].nunique() == 4 and len({row["node_id"] for row in reported}) == 2  # both nodes trained trials
    kept = uri.removeprefix("s3://")  # Ray names a trial's path within its filesystem
    assert all(f"{kept}/ray/" in path for path in trials["trial_path"].unique()), trials["trial_path"].unique()  # on the bucket
    files = listing(uri)
    assert {"best/model.keras", "best/metrics.json", "trials.parquet", "study.db", "report.html"} <= set(files)
    assert json.loads(read_text(f"{uri}/status.json"))["stage"] == "finished" and ".lock" not in files
    assert trials.groupby("trial_id")["epoch"].apply(list).map(lambda epochs: epochs == [1, 2]).all()  # each epoch once
    for name in finished:  # kept, not re-run; a trial interrupted before its checkpoint starts again
        rows = trials[trials["trial_path"].str.endswith(name)]
        assert len(rows) == 2 and (rows["timestamp"] <= killed_at).all()
    assert len(list((tmp_path / "cache" / "features").glob("*/manifest.json"))) == 1  # built on the hidden node, shipped back

    shutil.rmtree(RunPlace.at(uri).local)  # the report and predict read the run from the bucket
    report = run([sys.executable, "-m", "tuning.report", uri], timeout=180)
    assert report.returncode == 0 and f"wrote report.html and report.json in {uri}" in report.stdout, report.stderr[-2000:]
    image = next(tiny_cars.rglob("*.jpg"))
    predicted = run([sys.executable, "-m", "carclf.predict", "--model", f"{uri}/best/model.keras", "--json", str(image)], timeout=180)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(json.loads(predicted.stdout.splitlines()[-1])["top"]) == 4
