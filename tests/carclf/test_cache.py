"""The cache protocol: an entry is whole or absent, never reused damaged, never taken for another key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from carclf.cache import MANIFEST, SETTLED_NS, CacheEntry, CacheError, _settled_sha256, entry_key, file_sha256


def write_two_files(folder):
    (folder / "a.bin").write_bytes(b"first file")
    (folder / "b.txt").write_text("second file")
    return {"rows": 2}


def subprocess_build(root, key: str, writer_body: str) -> subprocess.Popen:
    """Build entry `key` of kind "things" in another process whose writer runs `writer_body` (folder: its partial folder)."""
    code = ("import os, signal, sys, time\nfrom pathlib import Path\nfrom carclf.cache import CacheEntry\n"
            f"def write(folder):\n    {writer_body}\n    return {{}}\n"
            f"CacheEntry(Path(sys.argv[1]), 'things', {key!r}).build(write)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(root)])


def test_a_built_entry_is_ready_with_its_files_and_details(tmp_path):
    entry = CacheEntry.of(str(tmp_path), "things", {"what": 1})
    assert not entry.ready() and entry.reuse("things") is None
    built = entry.build(write_two_files)
    assert entry.folder == tmp_path / "things" / entry.key
    assert sorted(path.name for path in entry.folder.iterdir()) == ["a.bin", "b.txt", MANIFEST]
    assert entry.ready(checksum=True) and entry.reuse("things") == built
    assert built["details"] == {"rows": 2} and built["files"]["a.bin"]["bytes"] == len(b"first file")
    assert CacheEntry.at(entry.folder) == entry
    assert [path.name for path in (tmp_path / "things").iterdir()] == [entry.key]  # no partial folder left


def test_an_interrupted_build_leaves_no_ready_entry(tmp_path):
    entry = CacheEntry.of(str(tmp_path), "things", {"what": 1})

    def fail(folder):
        (folder / "a.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        entry.build(fail)
    assert not entry.ready() and list((tmp_path / "things").iterdir()) == []


def test_a_killed_build_leaves_a_partial_folder_that_is_never_read_and_then_removed(tmp_path):
    """SIGKILL: no clean-up of its own. The entry is not ready; the next build or reuse removes the partial."""
    killed = subprocess_build(tmp_path, "key", "(folder / 'a.bin').write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.wait(timeout=120) == -signal.SIGKILL
    entry = CacheEntry(tmp_path, "things", "key")
    assert [path.name.startswith(".partial-") for path in (tmp_path / "things").iterdir()] == [True]
    assert not entry.ready()
    assert entry.reuse("things") is None and list((tmp_path / "things").iterdir()) == []


@pytest.mark.parametrize("damage", ["edited", "cut off", "removed", "copied from another key", "old layout"])
def test_a_damaged_manifest_is_not_reused(tmp_path, damage, caplog):
    entry = CacheEntry.of(str(tmp_path), "things", {"what": 1})
    entry.build(write_two_files)
    manifest = entry.folder / MANIFEST
    if damage == "edited":
        manifest.write_text(manifest.read_text().replace('"rows": 2', '"rows": 3'))
    elif damage == "cut off":
        manifest.write_text(manifest.read_text()[:40])
    elif damage == "removed":
        manifest.unlink()
    elif damage == "copied from another key":
        other = CacheEntry.of(str(tmp_path), "things", {"what": 2})
        other.build(write_two_files)
        manifest.write_bytes((other.folder / MANIFEST).read_bytes())
    else:  # a feature folder of carclf's layout before this protocol: same files, its own manifest
        manifest.write_text(json.dumps({"format": 2, "views": 1, "train_labels": [], "val_labels": []}))
    with pytest.raises(CacheError, match=entry.key):
        entry.manifest()
    with caplog.at_level("WARNING"):
        assert entry.reuse("things") is None
    assert f"rebuilding the things: {entry.folder}" in caplog.text
    entry.build(write_two_files)  # built again, in place
    assert entry.ready(checksum=True)


@pytest.mark.parametrize("damage", ["truncated", "a byte changed", "missing"])
def test_a_damaged_file_is_named(tmp_path, damage):
    entry = CacheEntry.of(str(tmp_path), "things", {"what": 1})
    entry.build(write_two_files)
    file = entry.folder / "a.bin"
    if damage == "truncated":
        file.write_bytes(b"first")
    elif damage == "a byte changed":
        file.write_bytes(b"first filE")
    else:
        file.unlink()
    cheap_check_passes = damage == "a byte changed"  # same size: only the checksum sees it
    assert entry.ready() == cheap_check_passes and not entry.ready(checksum=True)
    with pytest.raises(CacheError, match="a.bin"):
        entry.manifest(checksum=True)


def test_two_keys_do_not_collide(tmp_path):
    keys = {entry_key("things", {"what": 1}), entry_key("things", {"what": 2}), entry_key("others", {"what": 1}),
            entry_key("things", {"what": [1]})}
    assert len(keys) == 4 and all(len(key) == 24 for key in keys)
    first, second = (CacheEntry.of(str(tmp_path), "things", {"what": value}) for value in (1, 2))
    first.build(write_two_files)
    assert first.ready() and not second.ready()

    def write_other(folder):
        (folder / "a.bin").write_bytes(b"other")
        return {}

    second.build(write_other)
    assert (first.folder / "a.bin").read_bytes() == b"first file" and (second.folder / "a.bin").read_bytes() == b"other"


def test_concurrent_builders_of_one_key_both_succeed(tmp_path):
    """Two processes build the same key at once: each renames its complete folder in; one entry stays, whole."""
    builders = [subprocess_build(tmp_path, "key", "(folder / 'a.bin').write_bytes(b'same'); time.sleep(1)") for _ in range(2)]
    assert [builder.wait(timeout=120) for builder in builders] == [0, 0]
    entry = CacheEntry(tmp_path, "things", "key")
    assert entry.ready(checksum=True) and [path.name for path in (tmp_path / "things").iterdir()] == ["key"]


def test_a_changed_file_is_hashed_again_whatever_its_size_and_timestamps(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"weights one")
    before = file_sha256(path)
    stat = os.stat(path)
    path.write_bytes(b"weights two")  # same size, then the same timestamps
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) != before


def test_a_settled_file_is_hashed_once_per_process_until_it_changes(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"weights one")
    time.sleep(SETTLED_NS / 1e9 + 0.1)
    first = file_sha256(path)
    hits = _settled_sha256.cache_info().hits
    assert file_sha256(path) == first and _settled_sha256.cache_info().hits == hits + 1  # remembered
    stat = os.stat(path)
    path.write_bytes(b"weights two")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) != first  # the change time moved: hashed again


def test_details_written_as_json_read_back_whole(tmp_path):
    """A NaN (written as null) or a path (written as text) in the details leaves the manifest's digest valid."""
    entry = CacheEntry.of(str(tmp_path), "things", {"what": 1})
    entry.build(lambda folder: {"accuracy": float("nan"), "source": tmp_path})
    assert entry.manifest()["details"] == {"accuracy": None, "source": str(tmp_path)}
