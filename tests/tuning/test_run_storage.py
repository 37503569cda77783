"""A run on object storage, file by file, against a real S3-compatible server on 127.0.0.1 (moto's): what is copied
each way, what a fresh pull leaves of an earlier mirror, the lock, and errors that name the URI. A whole search on object
storage, on two nodes that share no file, is tests/tuning/test_cluster.py's."""

from __future__ import annotations

import json
import socket

import pytest

from carclf.object_storage import ObjectStorageError, download, fetch_folder, listing, read_text, upload, write_text
from tuning.run_folder import RunInUseError
from tuning.run_storage import RunPlace, run_location


def test_a_folder_goes_up_and_comes_back_whole(s3_bucket, tmp_path):
    source = tmp_path / "source"
    (source / "best").mkdir(parents=True)
    (source / "best" / "model.keras").write_bytes(b"\x00model" * 1000)
    (source / "status.json").write_text('{"stage": "finished"}')
    upload(source, f"{s3_bucket}/runs/one", ["best", "status.json", "not-there.json"])
    assert listing(f"{s3_bucket}/runs/one") == {"best/model.keras": 6000, "status.json": 21}
    (source / "best" / "model.keras").write_bytes(b"new")
    (source / "best" / "other").write_bytes(b"")
    upload(source, f"{s3_bucket}/runs/one", ["best"])  # a folder's earlier copy is replaced whole
    assert download(f"{s3_bucket}/runs/one", tmp_path / "back") == ["best/model.keras", "best/other", "status.json"]
    assert (tmp_path / "back" / "best" / "model.keras").read_bytes() == b"new"
    assert not list((tmp_path / "back").rglob(".partial-*"))
    assert (fetch_folder(f"{s3_bucket}/runs/one/best") / "model.keras").read_bytes() == b"new"
    with pytest.raises(ObjectStorageError, match=f"{s3_bucket}/runs/none: no such folder, or an empty one"):
        fetch_folder(f"{s3_bucket}/runs/none")


def test_a_uri_no_filesystem_takes_is_named():
    with pytest.raises(ObjectStorageError, match="nosuch://bucket/runs: "):
        listing("nosuch://bucket/runs")


def test_a_missing_bucket_is_named(s3_bucket):
    with pytest.raises(ObjectStorageError, match=f"{s3_bucket}-missing/runs/x/status.json: cannot be written"):
        write_text(f"{s3_bucket}-missing/runs/x/status.json", "{}")


def test_a_fresh_pull_replaces_the_mirror_and_leaves_checkpoints_on_the_store(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/runs/demo"
    place = RunPlace.at(uri)
    assert place.uri == uri and place.where == uri and place.local.name == "demo" and RunPlace.at(uri + "/") == place
    assert place.ray_where == f"{uri}/ray"  # Ray Tune's experiment, apart from carclf's files
    remote = tmp_path / "remote"
    for name in ("experiment.json", "ray/searcher-state-2026.pkl", "ray/trial_1/result.json", "ray/trial_1/checkpoint_000000/w.h5",
                 "ray/trial_1/checkpoint_000001/w.h5"):
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        (remote / name).write_text(name)
    upload(remote, uri, ["experiment.json", "ray"])
    place.local.mkdir(parents=True, exist_ok=True)
    (place.local / "trials.parquet").write_text("an earlier command's")
    (place.local / "old-trial").mkdir()
    place.pull(fresh=True)
    pulled = sorted(str(path.relative_to(place.local)) for path in place.local.rglob("*") if path.is_file())
    assert pulled == ["experiment.json", "ray/searcher-state-2026.pkl", "ray/trial_1/result.json"]
    assert place.pull_checkpoint("trial_1") == place.local / "ray" / "trial_1" / "checkpoint_000001"
    assert (place.local / "ray" / "trial_1" / "checkpoint_000001" / "w.h5").read_text() == "ray/trial_1/checkpoint_000001/w.h5"
    assert place.pull_checkpoint("trial_2") is None

    (place.local / "status.json").write_text('{"stage": "started"}')
    (place.local / ".progress.json").write_text("{}")
    place.push()  # carclf's own files only
    assert "status.json" in listing(uri) and ".progress.json" not in listing(uri)


def test_a_local_run_is_its_own_folder(tmp_path):
    place = RunPlace.at(tmp_path / "runs" / "demo")
    assert place.uri is None and place.where == str(tmp_path / "runs" / "demo") and place.ray_where == f"{place.where}/ray"
    place.pull(fresh=True)
    place.push()
    assert not (tmp_path / "runs").exists()  # nothing to copy either way
    assert run_location(str(tmp_path / "runs") + "/", "demo") == str(tmp_path / "runs" / "demo")
    assert run_location("s3://bucket/runs/", "demo") == "s3://bucket/runs/demo"


def test_the_lock_on_object_storage_names_another_machines_owner_and_takes_over_this_ones(s3_bucket):
    place = RunPlace.at(f"{s3_bucket}/runs/locked")
    lock = f"{place.uri}/.lock"
    with place.hold():
        assert f"on {socket.gethostname()}" in json.loads(read_text(lock))["owner"]
    assert read_text(lock) is None  # released

    write_text(lock, json.dumps({"host": "another-host", "owner": "pid 7 on another-host since 2026-12-06 10:00:00"}))
    with pytest.raises(RunInUseError, match=rf"{place.uri}: in use by pid 7 on another-host since .*if that command no longer "
                                            rf"runs, delete {lock}"):
        with place.hold():
            pass
    write_text(lock, json.dumps({"host": socket.gethostname(), "owner": "pid 1 (killed)"}))  # this machine's lock is free
    with place.hold():
        assert "pid 1 (killed)" not in read_text(lock)
