"""A real two-node Ray cluster on this machine, joined by the search with `--address`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.tuning.conftest import run, search_command

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Ray's `ray start --head` turns token authentication on; whoever joins must use the token too.
CLUSTER_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_AUTH_MODE": "token"}


@pytest.fixture
def two_node_cluster(tmp_path):
    """`ray start --head` with 1 CPU, and a second node with its own CPU; stopped afterwards."""
    address = f"127.0.0.1:{_free_port()}"
    env = CLUSTER_ENV
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    started = []
    try:
        head = subprocess.run([RAY, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", *common],
                              capture_output=True, text=True, timeout=120, env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        started.append("head")
        worker = subprocess.run([RAY, "start", f"--address={address}", *common], capture_output=True, text=True, timeout=120, env=env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield address
    finally:
        if started:
            subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_search_runs_trials_on_both_nodes_into_one_storage_path(two_node_cluster, tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "cluster", "--address", two_node_cluster, "--num-samples", "4",
                                "--max-concurrent", "2", "--cpus-per-trial", "1", "--set", "scheduler.max_epochs=2",
                                "--set", "scheduler.grace_period=2", "--no-retrain"), env=CLUSTER_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert trials["trial_id"].nunique() == 4
    assert trials["node_id"].nunique() == 2  # both nodes trained trials
    for path in trials["trial_path"].unique():
        assert Path(path).parent == tmp_path / "cluster"  # one storage path for every trial
        assert list(Path(path).glob("checkpoint_*"))
