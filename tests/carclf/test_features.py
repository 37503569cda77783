"""Cached frozen features: built once, and head-only training on them matches the ordinary path."""

from __future__ import annotations

import dataclasses

import numpy as np

from carclf.config import DataConfig, ModelConfig, RunSettings, TrainConfig
from carclf.data.sources import index_dataset
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
from carclf.data.table import class_names
from carclf.features import build_head_features, fit_head, load_head_features
from carclf.model import build_head, compile_classifier
from carclf.runtime import configure_tensorflow
from carclf.train import build_model, fit


def test_features_are_built_once_with_the_right_shapes(tiny_index, tiny_settings, tmp_path):
    settings = dataclasses.replace(tiny_settings, train=dataclasses.replace(tiny_settings.train, unfreeze_depth=0))
    path = build_head_features(tiny_index, settings, views=3, cache_dir=tmp_path)
    stamp = path.stat().st_mtime_ns
    assert build_head_features(tiny_index, settings, views=3, cache_dir=tmp_path) == path and path.stat().st_mtime_ns == stamp
    features = load_head_features(path)
    train_count = (tiny_index["split"] == "train").sum()
    assert features["train"].shape == (3, train_count, 2048)
    assert features["val"].shape == ((tiny_index["split"] == "val").sum(), 2048)
    assert not np.allclose(features["train"][0], features["train"][1])  # augmented views differ


def test_head_on_cached_features_matches_the_ordinary_path(tmp_path):
    """Same seeds, same backbone, same head: validation accuracy within noise, same reported keys."""
    root = generate_synthetic_cars(tmp_path / "cars", SyntheticSpec(train_per_class=16, test_per_class=2, seed=4))
    settings = RunSettings(
        data=DataConfig(format="devkit", root=str(root), image_size=32, validation_fraction=0.25),
        model=ModelConfig(weights="none", dropout=0.1),
        train=TrainConfig(epochs=6, batch_size=16, learning_rate=0.002, lr_decay=0.0, unfreeze_depth=0, seed=1),
    )
    index = index_dataset(settings.data)
    names = class_names(index)

    configure_tensorflow(2, settings.train.seed)
    ordinary = fit(build_model(len(names), settings), index, settings).history

    features = load_head_features(build_head_features(index, settings, views=6, cache_dir=tmp_path / "cache", cpus=2))
    configure_tensorflow(2, settings.train.seed)
    head = compile_classifier(build_head(len(names), 2048, settings.model), settings.train)
    cached = fit_head(head, features, settings).history

    assert set(cached) == set(ordinary)
    chance = 1 / len(names)
    for history in (ordinary, cached):
        assert max(history["val_accuracy"]) > 2 * chance
    assert abs(np.mean(cached["val_accuracy"][-3:]) - np.mean(ordinary["val_accuracy"][-3:])) < 0.2
