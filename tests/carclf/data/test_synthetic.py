"""The synthetic demo data: devkit layout, deterministic, and learnable by a small model."""

from __future__ import annotations

import hashlib

import keras

from carclf.config import DataConfig
from carclf.data.annotations import read_devkit_annotations
from carclf.data.sources import prepare_dataset
from carclf.data.store import open_image_store
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
from carclf.data.table import rows_for


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.jpg")))).hexdigest()


def test_devkit_layout_and_determinism(tmp_path):
    spec = SyntheticSpec(num_classes=3, train_per_class=4, test_per_class=2, seed=5)
    a, b = generate_synthetic_cars(tmp_path / "a", spec), generate_synthetic_cars(tmp_path / "b", spec)
    other = generate_synthetic_cars(tmp_path / "c", SyntheticSpec(num_classes=3, train_per_class=4, test_per_class=2, seed=6))
    assert _digest(a) == _digest(b) != _digest(other)
    table = read_devkit_annotations(a)
    assert table["split"].value_counts().to_dict() == {"train": 12, "test": 6}
    assert table["label"].value_counts().tolist() == [6, 6, 6]
    assert (table["bbox_x2"] > table["bbox_x1"]).all() and (table["bbox_y2"] > table["bbox_y1"]).all()


def test_default_dataset_size():
    spec = SyntheticSpec()
    assert spec.num_classes == 10 and spec.num_classes * (spec.train_per_class + spec.test_per_class) == 800


def test_a_small_model_learns_the_classes_well_above_chance(tmp_path):
    keras.utils.set_random_seed(0)
    root = generate_synthetic_cars(tmp_path / "cars", SyntheticSpec(train_per_class=20, test_per_class=6, seed=1))
    dataset = prepare_dataset(DataConfig(format="devkit", root=str(root), image_size=32, cache_dir=str(tmp_path / "cache")))
    pixels = open_image_store(dataset.store, 32)

    def split(*names):
        rows = rows_for(dataset.index, *names)
        return pixels[rows["store_row"].to_numpy()], rows["label"].to_numpy(dtype="int32")

    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.RandomFlip("horizontal", seed=0), keras.layers.Rescaling(1 / 128.0),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*split("train", "val"), batch_size=32, epochs=25, verbose=0)
    _, accuracy = model.evaluate(*split("test"), verbose=0)
    assert accuracy > 0.4  # chance is 0.1
