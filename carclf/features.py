"""Cached frozen features: head-only trials train on the backbone's outputs, computed once.

With unfreeze depth 0 the backbone never changes, so its pooled output for an image differs
between epochs only through augmentation. `build_head_features` runs the backbone once over
`views` augmented views of every training image and the clean validation images;
`fit_head` then trains the dropout + Dense head on those features, view `e % views` in epoch e,
with the same optimizer, metrics and callbacks as `carclf.train.fit`, so the searcher and the
report see the same numbers, only sooner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from carclf.config import RunSettings
from carclf.data.pipeline import make_dataset, naming_bad_images
from carclf.data.splits import rows_for
from carclf.data.store import default_cache_dir, store_key
from carclf.files import atomic_path
from carclf.model import build_backbone
from carclf.runtime import configure_tensorflow
from carclf.train import EpochStats

logger = logging.getLogger(__name__)
FEATURES_FORMAT = 1


def features_key(index, settings: RunSettings, views: int) -> str:
    """A hash of what the features depend on: images, image settings, weights, augmentation, seed."""
    data, weights = settings.data, settings.model.weights
    weights_stamp = Path(weights).stat().st_mtime_ns if Path(weights).is_file() else 0
    described = {"format": FEATURES_FORMAT, "images": store_key(index, data), "weights": weights, "weights_stamp": weights_stamp,
                 "views": views, "flip": data.horizontal_flip, "rotation": data.rotation_degrees, "seed": settings.train.seed}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def feature_extractor(settings: RunSettings) -> keras.Model:
    """The frozen backbone + global average pooling, exactly as a depth-0 classifier computes it."""
    size = settings.data.image_size
    backbone = build_backbone(size, settings.model.weights)
    backbone.trainable = False
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False)))


def build_head_features(index, settings: RunSettings, views: int, cache_dir: str | Path | None = None,
                        image_store: str | None = None, cpus: int | None = None) -> Path:
    """Compute (or reuse) `features-<key>.npz`: `views` augmented training views and the validation set."""
    path = Path(cache_dir or default_cache_dir()) / f"features-{features_key(index, settings, views)}.npz"
    if path.is_file():
        logger.info("reusing cached head features %s", path)
        return path
    configure_tensorflow(cpus, settings.train.seed)  # the same random backbone a depth-0 trial builds
    extractor = feature_extractor(settings)
    train_rows, validation_rows = rows_for(index, "train"), rows_for(index, "val")

    def features(rows, training: bool, seed: int) -> np.ndarray:
        images = make_dataset(rows, settings.data, 64, training=training, seed=seed, shuffle=False, image_store=image_store)
        with naming_bad_images(rows):
            return extractor.predict(images.map(lambda x, y: x), verbose=0).astype(np.float16)

    logger.info("computing frozen features: %d views of %d training images, %d validation images", views, len(train_rows), len(validation_rows))
    train = np.stack([features(train_rows, True, settings.train.seed + view) for view in range(views)])
    validation = features(validation_rows, False, 0)
    with atomic_path(path) as partial:
        with partial.open("wb") as handle:
            np.savez(handle, train=train, train_labels=train_rows["label"].to_numpy(np.int32),
                     val=validation, val_labels=validation_rows["label"].to_numpy(np.int32))
    return path


def load_head_features(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def fit_head(model: keras.Model, features: dict[str, np.ndarray], settings: RunSettings, *, initial_epoch: int = 0,
             callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int | str = 0) -> keras.callbacks.History:
    """Train the head on cached features; epoch e uses view e % views. Same logs as `carclf.train.fit`."""
    train = settings.train
    views, count = features["train"].shape[:2]
    steps = train.steps_per_epoch or math.ceil(count / train.batch_size)

    def view(number: int) -> tf.data.Dataset:
        pairs = tf.data.Dataset.from_tensor_slices((features["train"][number].astype(np.float32), features["train_labels"]))
        pairs = pairs.shuffle(count, seed=train.seed + number, reshuffle_each_iteration=True).batch(train.batch_size)
        return pairs.repeat().take(steps)  # exactly one epoch's batches

    epochs = view(0)
    for number in range(1, views):
        epochs = epochs.concatenate(view(number))
    epochs = epochs.repeat().skip((initial_epoch % views) * steps).prefetch(tf.data.AUTOTUNE)
    validation = tf.data.Dataset.from_tensor_slices((features["val"].astype(np.float32), features["val_labels"])).batch(train.batch_size)
    return model.fit(epochs, epochs=train.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps, validation_data=validation,
                     callbacks=[EpochStats(steps * train.batch_size), *callbacks], shuffle=False, verbose=verbose)
