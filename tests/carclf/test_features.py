"""Cached frozen features: exactly what the frozen network computes, never stale, read as memory maps."""

from __future__ import annotations

import dataclasses
import shutil

import keras
import numpy as np
import pytest

from carclf.config import ModelConfig
from carclf.data.store import build_image_store, open_image_store
from carclf.data.table import rows_for
from carclf.features import HeadFeatures, build_head_features, feature_entry, open_head_features, view_transforms
from carclf.layers import flip_and_rotate
from carclf.model import build_backbone, build_classifier
from carclf.runtime import configure_process
from carclf.train import TrainingData, TrainingRun, train_classifier


@pytest.fixture
def pretrained_settings(tiny_settings, synthetic_backbone, tmp_path):
    """Tiny settings with the synthetic pretrained backbone, 3 views, and a private cache."""
    data = dataclasses.replace(tiny_settings.data, cache_dir=str(tmp_path / "cache"))
    return dataclasses.replace(tiny_settings, data=data, model=ModelConfig(weights=str(synthetic_backbone), dropout=0.2),
                               train=dataclasses.replace(tiny_settings.train, feature_views=3, unfreeze_depth=0))


def test_features_are_built_once_in_float32_memory_maps(tiny_dataset, pretrained_settings):
    folder = build_head_features(tiny_dataset.index, tiny_dataset.store, pretrained_settings)
    stamp = (folder / "train.npy").stat().st_mtime_ns
    assert build_head_features(tiny_dataset.index, tiny_dataset.store, pretrained_settings) == folder
    assert (folder / "train.npy").stat().st_mtime_ns == stamp
    features = open_head_features(folder)
    assert isinstance(features.train, np.memmap) and features.train.dtype == np.float32
    assert features.train.shape == (3, len(rows_for(tiny_dataset.index, "train")), 2048)
    assert features.val.shape == (len(rows_for(tiny_dataset.index, "val")), 2048)
    assert features.val_views.shape == (3, len(rows_for(tiny_dataset.index, "val")), 2048)
    assert not np.allclose(features.train[0], features.train[1])  # augmented views differ
    assert not np.allclose(features.val_views[0], features.val)


def test_cached_views_are_what_the_classifier_computes(tiny_dataset, pretrained_settings):
    """The same stored view through the classifier's own frozen layers gives the same features (1e-3)."""
    folder = build_head_features(tiny_dataset.index, tiny_dataset.store, pretrained_settings)
    features = open_head_features(folder)
    classifier = build_classifier(4, pretrained_settings.data, pretrained_settings.model, 0)
    pooled = keras.Model(classifier.get_layer("augmentation").output, classifier.get_layer("pool").output)
    train = rows_for(tiny_dataset.index, "train")
    pixels = open_image_store(tiny_dataset.store, 32)[train["store_row"].to_numpy()]
    angles, flips = view_transforms(len(train), 2, pretrained_settings)
    view = keras.ops.convert_to_numpy(flip_and_rotate(pixels, angles, flips))
    np.testing.assert_allclose(pooled.predict(view, verbose=0), features.train[2], atol=1e-3)
    clean = open_image_store(tiny_dataset.store, 32)[rows_for(tiny_dataset.index, "val")["store_row"].to_numpy()]
    np.testing.assert_allclose(pooled.predict(clean.astype(np.float32), verbose=0), features.val, atol=1e-3)
    angles, flips = view_transforms(len(clean), 1, pretrained_settings, "val")
    view = keras.ops.convert_to_numpy(flip_and_rotate(clean, angles, flips))
    np.testing.assert_allclose(pooled.predict(view, verbose=0), features.val_views[1], atol=1e-3)


def test_views_of_both_splits_are_drawn_by_position_across_them():
    """Positions number the training images' views, then the validation images'; each draw is one of an image's views."""
    train = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # 2 views of 3 images
    validation = 100 + np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)  # 2 views of 2 images
    views = HeadFeatures(train, np.array([0, 1, 2]), validation[0], validation, np.array([3, 4])).training_views(("train", "val"))
    assert views.labels.tolist() == [0, 1, 2, 3, 4]
    positions = np.array([4, 0, 3, 2, 1, 4])
    drawn = views.draw(positions, np.random.default_rng(0))
    chosen = np.random.default_rng(0).integers(2, size=len(positions))
    expected = [train[v, p] if p < 3 else validation[v, p - 3] for v, p in zip(chosen, positions)]
    np.testing.assert_array_equal(drawn, np.array(expected))


def test_a_retraining_on_train_and_val_trains_its_head_on_both_splits_views(tiny_dataset, pretrained_settings):
    """A depth-0 run on train + validation trains on cached features only, drawn from both splits' views with both
    splits' labels, and its head in the classifier predicts the images as the head predicts their features."""
    settings = pretrained_settings.with_train(epochs=2, learning_rate=0.05)
    data = TrainingData(tiny_dataset.index, tiny_dataset.store, build_head_features(tiny_dataset.index, tiny_dataset.store, settings))
    features = open_head_features(data.features)
    configure_process(2, seed=0)
    run = TrainingRun(data, settings, splits=("train", "val"), validate=False)
    while not run.finished:
        run.train_epoch()
    assert run.classifier is None  # every epoch trained on the cached features
    batches = run.current.batches
    np.testing.assert_array_equal(batches.labels, np.concatenate([features.train_labels, features.val_labels]))
    assert batches.steps * settings.train.batch_size == 40  # 32 training and 8 validation images an epoch
    head, classifier = run.final_model, run.whole_classifier
    clean = open_image_store(tiny_dataset.store, 32)[rows_for(tiny_dataset.index, "val")["store_row"].to_numpy()]
    np.testing.assert_allclose(classifier.predict(clean, verbose=0), head.predict(features.val, verbose=0), atol=1e-4)


def test_head_on_cached_features_learns_as_the_head_through_the_network(tiny_dataset, pretrained_settings):
    """One unaugmented view, the same seeds: the two paths see the same features and agree on accuracy."""
    data = dataclasses.replace(pretrained_settings.data, rotation_degrees=0.0, horizontal_flip=False)
    settings = dataclasses.replace(pretrained_settings, data=data).with_train(feature_views=1, epochs=4, learning_rate=0.05)
    accuracies = {}
    for path in ("network", "cached"):
        configure_process(2, seed=0)
        features = build_head_features(tiny_dataset.index, tiny_dataset.store, settings) if path == "cached" else None
        logs = []
        callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, epoch_logs: logs.append(epoch_logs["val_accuracy"]))
        train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store, features), settings, callbacks=[callback])
        accuracies[path] = logs
    assert max(accuracies["network"]) > 0.25  # better than chance (4 classes)
    np.testing.assert_allclose(accuracies["cached"], accuracies["network"], atol=0.01)


@pytest.mark.parametrize("change", ["seed", "split", "label", "weights", "views"])
def test_anything_the_features_depend_on_makes_a_new_cache(tiny_dataset, pretrained_settings, change, tmp_path):
    index, settings = tiny_dataset.index, pretrained_settings
    folder = build_head_features(index, tiny_dataset.store, settings)
    assert folder == feature_entry(index, tiny_dataset.store, settings).folder
    if change == "seed":
        settings = settings.with_train(seed=1)
    elif change == "views":
        settings = settings.with_train(feature_views=2)
    elif change == "split":
        index = index.copy()
        index.loc[index[index["split"] == "train"].index[0], "split"] = "val"
    elif change == "label":
        index = index.copy()
        first = index[index["split"] == "train"].index[0]
        index.loc[first, "label"] = (index.loc[first, "label"] + 1) % 4
    else:
        backbone = build_backbone(32, settings.model.weights)
        kernel = backbone.get_layer("conv5_block3_3_conv").kernel
        kernel.assign(kernel * 1.01)
        weights = tmp_path / "other.weights.h5"
        backbone.save_weights(weights)
        settings = dataclasses.replace(settings, model=ModelConfig(weights=str(weights)))
    assert feature_entry(index, tiny_dataset.store, settings).folder != folder  # the folder build_head_features fills and reads


def test_truncated_feature_file_is_named_and_rebuilt(tiny_dataset, pretrained_settings, caplog):
    folder = build_head_features(tiny_dataset.index, tiny_dataset.store, pretrained_settings)
    good = np.load(folder / "train.npy").copy()
    with open(folder / "train.npy", "r+b") as handle:
        handle.truncate(1000)
    with caplog.at_level("WARNING"):
        again = build_head_features(tiny_dataset.index, tiny_dataset.store, pretrained_settings)
    assert again == folder and "train.npy" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_allclose(np.load(folder / "train.npy"), good, atol=1e-5)


def test_an_image_changed_in_place_makes_a_new_feature_cache(tiny_cars, tiny_settings, tiny_index, tmp_path):
    """The features' key holds the store's, which holds each image's content: a byte changed in place,
    with the file's size and timestamps given back, names another feature folder."""
    from tests.carclf.data.test_store import change_in_place

    root = tmp_path / "cars"
    shutil.copytree(tiny_cars, root)
    index = tiny_index.assign(path=tiny_index["path"].str.replace(str(tiny_cars), str(root), regex=False))
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"the key hashes this file's bytes")
    settings = dataclasses.replace(tiny_settings, data=dataclasses.replace(tiny_settings.data, cache_dir=str(tmp_path / "cache")),
                                   model=ModelConfig(weights=str(weights)))
    before = feature_entry(index, build_image_store(index, settings.data).path, settings).folder
    change_in_place(index["path"].iloc[0])
    assert feature_entry(index, build_image_store(index, settings.data).path, settings).folder != before


def test_a_weights_file_changed_in_place_gives_a_new_key(tiny_dataset, tiny_settings, tmp_path):
    """The weights file's digest is computed once per process, but never kept past a change: a byte changed
    with the file's size and timestamps given back makes a new key."""
    from tests.carclf.data.test_store import change_in_place

    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"the key hashes this file's bytes")
    settings = dataclasses.replace(tiny_settings, model=ModelConfig(weights=str(weights)))
    before = feature_entry(tiny_dataset.index, tiny_dataset.store, settings).key
    assert feature_entry(tiny_dataset.index, tiny_dataset.store, settings).key == before  # asked again: the same
    change_in_place(str(weights))
    assert feature_entry(tiny_dataset.index, tiny_dataset.store, settings).key != before
