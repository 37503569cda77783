"""`tf.data` input pipeline built from the dataset table.

Per image (parallel map): read, decode JPEG or PNG to RGB, crop to the bounding box with a
margin, resize. Per batch: random flip and rotation (training only), then ResNet50's
preprocessing. Evaluation batches are deterministic and unshuffled.

TensorFlow reports an undecodable image as an opaque `InvalidArgumentError` without the file
name; `naming_bad_images` turns that into an error naming the file(s).
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from carclf.config import DataConfig
from carclf.data.table import BBOX_COLUMNS, DatasetError

AUTOTUNE = tf.data.AUTOTUNE
NO_BOX = -1


class ImageDecodeError(DatasetError):
    """One or more images cannot be decoded."""


def box_array(rows: pd.DataFrame) -> np.ndarray:
    """The rows' boxes as an (n, 4) int32 array, `NO_BOX` where a row has none."""
    return rows[BBOX_COLUMNS].fillna(NO_BOX).to_numpy(dtype=np.int32).reshape(-1, 4)


def load_image(path: tf.Tensor, box: tf.Tensor, image_size: int, crop_to_bbox: bool, margin: float) -> tf.Tensor:
    """Decode one image to RGB, crop it to `box` (x1, y1, x2, y2) plus `margin`, resize: float32 0..255."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if crop_to_bbox:
        image = _crop(image, box, margin)
    return tf.image.resize(image, (image_size, image_size))


def _crop(image: tf.Tensor, box: tf.Tensor, margin: float) -> tf.Tensor:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    box = tf.cast(box, tf.float32)
    pad_x = margin * (box[2] - box[0])
    pad_y = margin * (box[3] - box[1])
    x1 = tf.clip_by_value(tf.cast(box[0] - pad_x, tf.int32), 0, width - 1)
    y1 = tf.clip_by_value(tf.cast(box[1] - pad_y, tf.int32), 0, height - 1)
    x2 = tf.clip_by_value(tf.cast(tf.math.ceil(box[2] + pad_x), tf.int32), x1 + 1, width)
    y2 = tf.clip_by_value(tf.cast(tf.math.ceil(box[3] + pad_y), tf.int32), y1 + 1, height)
    has_box = box[0] >= 0
    return tf.cond(has_box, lambda: image[y1:y2, x1:x2], lambda: image)


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """ResNet50's own preprocessing (RGB→BGR, ImageNet mean subtracted), as its weights expect."""
    return keras.applications.resnet50.preprocess_input(images)


def augmenter(data: DataConfig, seed: int) -> keras.Sequential | None:
    """Random horizontal flip and rotation up to `data.rotation_degrees`, per batch (None: neither)."""
    layers = []
    if data.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if data.rotation_degrees > 0:
        layers.append(keras.layers.RandomRotation(data.rotation_degrees / 360.0, fill_mode="reflect", seed=seed + 1))
    return keras.Sequential(layers, name="augmentation") if layers else None


def make_dataset(
    rows: pd.DataFrame,
    data: DataConfig,
    batch_size: int,
    training: bool,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of (preprocessed images, labels) from `rows` of the dataset table.

    Training: reshuffled every epoch (seeded), flipped and rotated. Evaluation: table order,
    no augmentation. Unlabeled rows get label -1. `repeat` makes the dataset endless, for a fixed
    `steps_per_epoch`.
    """
    if len(rows) == 0:
        raise DatasetError("no rows to build a dataset from")
    labels = rows["label"].fillna(-1).to_numpy(dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((rows["path"].to_numpy(dtype=str), box_array(rows), labels))
    if training:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def load(path, box, label):
        return load_image(path, box, data.image_size, data.crop_to_bbox, data.bbox_margin), label

    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)
    augment = augmenter(data, seed) if training else None
    if augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def steps_per_pass(rows: pd.DataFrame, batch_size: int) -> int:
    """Batches in one pass over `rows`."""
    return math.ceil(len(rows) / batch_size)


def tf_error_reason(error: tf.errors.OpError) -> str:
    """The readable part of a TensorFlow op error ("Unknown image file format..."), without the graph noise."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", error.message.splitlines()[0])
    return text.strip()[:200]


def find_unreadable_images(paths: list[str]) -> list[tuple[str, str]]:
    """Decode each image eagerly; return (path, reason) for those TensorFlow cannot read."""
    bad = []
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
            bad.append((path, tf_error_reason(error)))
    return bad


@contextlib.contextmanager
def naming_bad_images(rows: pd.DataFrame) -> Iterator[None]:
    """Re-raise TensorFlow's decode failures as `ImageDecodeError` naming every unreadable file."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        bad = find_unreadable_images(rows["path"].tolist())
        if not bad:
            raise
        listed = "\n  ".join(f"{path}: {reason}" for path, reason in bad[:10])
        more = f"\n  and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ImageDecodeError(
            f"{len(bad)} image(s) cannot be decoded (corrupt, truncated or not an image):\n  {listed}{more}\n"
            "Replace them, or remove their rows from the annotations."
        ) from error
