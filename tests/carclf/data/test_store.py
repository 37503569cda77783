"""The decoded image store: built once, reused only when verified, rebuilt when stale or damaged."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from carclf.cache import MANIFEST
from carclf.config import DataConfig
from carclf.data.images import load_crop
from carclf.data.store import StoreError, build_image_store, open_image_store, store_entry, verify_store
from carclf.data.table import boxes


@pytest.fixture
def own_cars(tiny_cars, tiny_index, tmp_path):
    """A private copy of the tiny dataset (tests here change its files), its table and a private cache."""
    root = tmp_path / "cars"
    shutil.copytree(tiny_cars, root)
    index = tiny_index.assign(path=tiny_index["path"].str.replace(str(tiny_cars), str(root), regex=False))
    return index, DataConfig(image_size=32, cache_dir=str(tmp_path / "cache"))


def manifest_path(store):
    return store_entry(store).folder / MANIFEST


def test_store_is_built_once_and_reused(own_cars):
    index, data = own_cars
    store = build_image_store(index, data)
    built_at = store.path.stat().st_mtime_ns
    again = build_image_store(index, data)
    assert again.path == store.path and again.path.stat().st_mtime_ns == built_at and again.digests == store.digests
    assert open_image_store(store.path, 32).shape == (len(index), 32, 32, 3)
    other = build_image_store(index, DataConfig(image_size=48, cache_dir=data.cache_dir))
    assert other.path != store.path  # other settings, other store


def test_stored_pixels_are_what_load_crop_gives(own_cars):
    index, data = own_cars
    pixels = open_image_store(build_image_store(index, data, workers=2).path, 32)
    for row in (0, 7, len(index) - 1):
        expected = load_crop(index["path"].iloc[row], boxes(index.iloc[[row]])[0], 32, data.bbox_margin)
        np.testing.assert_array_equal(pixels[row], expected)


def change_in_place(path: str) -> None:
    """Change a byte in the middle of the file, then give it back its size and timestamps."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_file_changed_in_place_makes_a_new_store_whatever_its_size_and_timestamps(own_cars):
    index, data = own_cars
    store = build_image_store(index, data)
    changed = index["path"].iloc[3]
    change_in_place(changed)
    rebuilt = build_image_store(index, data)
    assert rebuilt.path != store.path and rebuilt.digests[3] != store.digests[3]
    assert rebuilt.digests[:3] == store.digests[:3]
    np.testing.assert_array_equal(np.load(rebuilt.path)[3], load_crop(changed, boxes(index.iloc[[3]])[0], 32, data.bbox_margin))


def test_a_file_touched_but_not_changed_reuses_the_store(own_cars):
    index, data = own_cars
    store = build_image_store(index, data)
    touched = index["path"].iloc[3]
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 10**9))
    assert build_image_store(index, data).path == store.path


def test_unreadable_image_is_reported_with_its_row(own_cars):
    index, data = own_cars
    broken = index["path"].iloc[5]
    with open(broken, "r+b") as handle:
        handle.truncate(100)
    store = build_image_store(index, data)
    assert list(store.failures) == [5] and "not a readable image" in store.failures[5]


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "drop the manifest", "wrong manifest"])
def test_damaged_store_is_named_and_rebuilt(own_cars, damage, caplog):
    index, data = own_cars
    store = build_image_store(index, data)
    good = np.load(store.path).copy()
    if damage == "truncate":
        with open(store.path, "r+b") as handle:
            handle.truncate(store.path.stat().st_size // 2)
    elif damage == "flip a byte":
        with open(store.path, "r+b") as handle:
            handle.seek(store.path.stat().st_size - 10)
            handle.write(b"\xff")
    elif damage == "drop the manifest":
        manifest_path(store.path).unlink()
    else:
        manifest = json.loads(manifest_path(store.path).read_text())
        manifest["details"]["shape"][0] -= 1  # promises a store it does not hold
        manifest_path(store.path).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=store.path.parent.name):  # the entry's folder, named by its key
        verify_store(store.path, good.shape, checksum=True)
    with caplog.at_level("WARNING"):
        rebuilt = build_image_store(index, data)
    assert rebuilt.path == store.path and "rebuilding the decoded image store" in caplog.text
    np.testing.assert_array_equal(np.load(rebuilt.path), good)


def test_half_written_store_is_never_reused(own_cars):
    index, data = own_cars
    store = build_image_store(index, data)
    manifest_path(store.path).unlink()  # as if the build died before its last step
    with pytest.raises(StoreError, match="incomplete"):
        open_image_store(store.path, 32)
    assert not list(store.path.parent.parent.glob(".partial-*"))


def test_a_killed_build_leaves_nothing_behind_for_good(own_cars):
    """A build killed outright (SIGKILL, so no clean-up of its own) leaves its partial array file; the next
    build in that folder removes it."""
    index, data = own_cars
    store = build_image_store(index, data)
    decoded = store.path.parent.parent
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom carclf.cache import CacheEntry\n"
            "def write(folder):\n    (folder / 'images.npy').write_bytes(b'half a store')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "CacheEntry(Path(sys.argv[1]), 'decoded', 'killed').build(write)")
    killed = subprocess.run([sys.executable, "-c", code, str(decoded.parent)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(decoded.glob(".partial-*"))) == 1
    assert build_image_store(index, data).path == store.path
    assert not list(decoded.glob(".partial-*"))
