"""The decoded image store: built once, reused, invalidated by changed files, faithful to the files."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from carclf.config import DataConfig
from carclf.data.pipeline import ImageDecodeError, make_dataset
from carclf.data.splits import rows_for
from carclf.data.store import build_image_store
from carclf.data.table import DatasetError


@pytest.fixture
def own_cars(tiny_cars, tiny_index, tmp_path):
    """A private copy of the tiny dataset (tests here change its files), and its table."""
    root = tmp_path / "cars"
    shutil.copytree(tiny_cars, root)
    index = tiny_index.assign(path=tiny_index["path"].str.replace(str(tiny_cars), str(root), regex=False))
    return root, index


def test_store_is_built_once_and_reused(own_cars, tmp_path):
    _, index = own_cars
    data = DataConfig(image_size=32)
    store = build_image_store(index, data, tmp_path / "cache")
    built_at = store.stat().st_mtime_ns
    again = build_image_store(index, data, tmp_path / "cache")
    assert again == store and again.stat().st_mtime_ns == built_at
    assert np.load(store, mmap_mode="r").shape == (len(index), 32, 32, 3)
    assert build_image_store(index, DataConfig(image_size=48), tmp_path / "cache") != store  # other settings, other store


def test_changed_file_makes_a_new_store(own_cars, tmp_path):
    _, index = own_cars
    data = DataConfig(image_size=32)
    store = build_image_store(index, data, tmp_path / "cache")
    changed = index["path"].iloc[3]
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    assert build_image_store(index, data, tmp_path / "cache") != store


def test_corrupt_file_stops_the_build_naming_it(own_cars, tmp_path):
    _, index = own_cars
    broken = index["path"].iloc[5]
    with open(broken, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ImageDecodeError, match=broken.replace(".", r"\.")):
        build_image_store(index, DataConfig(image_size=32), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))  # no half-written store left behind


def test_stored_pixels_match_the_files(tiny_index, tmp_path):
    data = DataConfig(image_size=32)
    store = build_image_store(tiny_index, data, tmp_path / "cache")
    rows = rows_for(tiny_index, "test")
    from_files = np.concatenate([x.numpy() for x, _ in make_dataset(rows, data, 5, training=False)])
    from_store = np.concatenate([x.numpy() for x, _ in make_dataset(rows, data, 5, training=False, image_store=store)])
    assert np.abs(from_files - from_store).max() <= 0.5 + 1e-4  # uint8 rounding only


def test_training_batches_from_the_store(tiny_index, tmp_path):
    data = DataConfig(image_size=32)
    store = build_image_store(tiny_index, data, tmp_path / "cache")
    rows = rows_for(tiny_index, "train")
    images, labels = next(iter(make_dataset(rows, data, len(rows), training=True, image_store=store)))
    assert images.shape == (len(rows), 32, 32, 3)
    assert sorted(labels.numpy().tolist()) == sorted(rows["label"].tolist())


def test_rows_missing_from_the_store_are_an_error(tiny_index, tmp_path):
    data = DataConfig(image_size=32)
    store = build_image_store(rows_for(tiny_index, "test"), data, tmp_path / "cache")
    with pytest.raises(DatasetError, match="does not hold these 32 px images"):
        make_dataset(rows_for(tiny_index, "train"), data, 8, training=True, image_store=store)
