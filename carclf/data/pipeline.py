"""`tf.data` input pipeline built from the dataset table.

Per image (parallel map): read, decode JPEG or PNG to RGB, then one bilinear sampling pass that
crops to the bounding box with a margin, resizes and, for training, rotates and mirrors at
random. Per batch: ResNet50's preprocessing. Evaluation batches are deterministic and unshuffled.

TensorFlow reports an undecodable image as an opaque `InvalidArgumentError` without the file
name; `naming_bad_images` turns that into an error naming the file(s).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
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


def crop_window(box: tf.Tensor, height: tf.Tensor, width: tf.Tensor, crop_to_bbox: bool, margin: float) -> tf.Tensor:
    """The (x1, y1, x2, y2) window to sample, in pixels: the box plus `margin`, or the whole image."""
    whole = tf.stack([0.0, 0.0, tf.cast(width, tf.float32), tf.cast(height, tf.float32)])
    if not crop_to_bbox:
        return whole
    box = tf.cast(box, tf.float32)
    pad = margin * tf.stack([box[2] - box[0], box[3] - box[1]])
    grown = tf.concat([box[:2] - pad, box[2:] + pad], axis=0)
    clipped = tf.clip_by_value(grown, 0.0, tf.tile(whole[2:], [2]))
    return tf.where(box[0] >= 0, clipped, whole)


def sampling_transform(window: tf.Tensor, size: int, angle: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Projective transform(s) from output pixels to input pixels: crop, resize, rotate and mirror at once.

    Output pixel u (centre at u + 0.5 on a `size` canvas) is offset from the centre, mirrored if
    `flip` is -1, rotated by `angle` (radians), scaled to the window and shifted to its centre.
    Input coordinates are pixel indices (centres at integers), hence the -0.5. `angle` and `flip`
    may be scalars (one transform, shape [8]) or vectors (one per image, shape [n, 8]).
    """
    scale_x = (window[2] - window[0]) / size
    scale_y = (window[3] - window[1]) / size
    centre_x, centre_y = (window[0] + window[2]) / 2, (window[1] + window[3]) / 2
    cos, sin, k = tf.cos(angle), tf.sin(angle), 0.5 - size / 2
    zero = tf.zeros_like(cos)
    return tf.stack([
        scale_x * cos * flip, -scale_x * sin, centre_x - 0.5 + scale_x * (cos * flip * k - sin * k),
        scale_y * sin * flip, scale_y * cos, centre_y - 0.5 + scale_y * (sin * flip * k + cos * k),
        zero, zero,
    ], axis=-1)


def random_angles_and_flips(count, rotation_degrees: float, horizontal_flip: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Uniform angles within ±`rotation_degrees` (radians) and mirror signs (-1 or 1), `count` of each."""
    max_angle = rotation_degrees * np.pi / 180.0
    angle = tf.random.uniform(count, -max_angle, max_angle) if max_angle > 0 else tf.zeros(count)
    flip = tf.where(tf.random.uniform(count) < 0.5, -1.0, 1.0) if horizontal_flip else tf.ones(count)
    return angle, flip


def transform_images(images: tf.Tensor, transforms: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear sampling of `images` (n, h, w, 3) through `transforms` (n, 8); reflected borders."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([size, size]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT",
    )


def augment_views(images: tf.Tensor, window: tf.Tensor, size: int, rotation_degrees: float, horizontal_flip: bool) -> tf.Tensor:
    """`window` of each of `images` (n, h, w, 3), each randomly rotated and mirrored, as float32 (n, size, size, 3)."""
    angle, flip = random_angles_and_flips(tf.shape(images)[:1], rotation_degrees, horizontal_flip)
    return tf.cast(transform_images(images, sampling_transform(window, size, angle, flip), size), tf.float32)


def sample_view(image: tf.Tensor, window: tf.Tensor, size: int, rotation_degrees: float = 0.0, horizontal_flip: bool = False) -> tf.Tensor:
    """One `size`x`size` float32 view of `image` (uint8 HxWx3): the window, randomly rotated and mirrored.

    A single bilinear sampling pass does crop, resize, rotation and flip together: three separate
    passes (resize, then Keras' rotation and flip layers) cost about twice as much. Corners a
    rotation uncovers reflect the surrounding image. Without augmentation a plain crop and resize
    is faster still (TensorFlow's resize kernel beats its generic transform kernel about 2x).
    """
    if rotation_degrees == 0 and not horizontal_flip:
        corners = tf.cast(tf.concat([tf.floor(window[:2]), tf.math.ceil(window[2:])], axis=0), tf.int32)
        return tf.image.resize(image[corners[1] : corners[3], corners[0] : corners[2]], (size, size))
    return augment_views(image[tf.newaxis], window, size, rotation_degrees, horizontal_flip)[0]


def decode(path: tf.Tensor) -> tf.Tensor:
    """Any JPEG or PNG (grayscale, CMYK, a PNG named .jpg) as uint8 RGB."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def load_image(path: tf.Tensor, box: tf.Tensor, image_size: int, crop_to_bbox: bool, margin: float,
               rotation_degrees: float = 0.0, horizontal_flip: bool = False) -> tf.Tensor:
    """Decode one image, crop it to `box` (x1, y1, x2, y2) plus `margin`, resize (and augment): float32 0..255."""
    image = decode(path)
    window = crop_window(box, tf.shape(image)[0], tf.shape(image)[1], crop_to_bbox, margin)
    return sample_view(image, window, image_size, rotation_degrees, horizontal_flip)


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """ResNet50's own preprocessing (RGB→BGR, ImageNet mean subtracted), as its weights expect."""
    return keras.applications.resnet50.preprocess_input(images)


def make_dataset(
    rows: pd.DataFrame,
    data: DataConfig,
    batch_size: int,
    training: bool,
    seed: int = 0,
    repeat: bool = False,
    image_store: str | Path | None = None,
    shuffle: bool | None = None,
) -> tf.data.Dataset:
    """Batches of (preprocessed images, labels) from `rows` of the dataset table.

    Training: reshuffled every epoch (seeded), flipped and rotated. Evaluation: table order,
    no augmentation. Unlabeled rows get label -1. `repeat` makes the dataset endless, for a fixed
    `steps_per_epoch`. With `image_store` (see `carclf.data.store`), pixels come from the decoded
    store instead of the files. `shuffle` (default: `training`) turns the per-epoch shuffle off for
    ordered augmented views.
    """
    if len(rows) == 0:
        raise DatasetError("no rows to build a dataset from")
    labels = rows["label"].fillna(-1).to_numpy(dtype=np.int32)
    rotation, flip = (data.rotation_degrees, data.horizontal_flip) if training else (0.0, False)
    if image_store is None:
        source = (rows["path"].to_numpy(dtype=str), box_array(rows))
    else:
        read, positions = stored_batch_reader(image_store, data.image_size, rows["path"])
        source = (positions,)
    dataset = tf.data.Dataset.from_tensor_slices((*source, labels))
    shuffled = training if shuffle is None else shuffle
    if shuffled:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    if image_store is None:
        def load(path, box, label):
            return load_image(path, box, data.image_size, data.crop_to_bbox, data.bbox_margin, rotation, flip), label

        dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=not shuffled).batch(batch_size)
    else:
        dataset = dataset.batch(batch_size).map(lambda positions, y: (read(positions, rotation, flip), y), num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def store_paths_file(image_store: str | Path) -> Path:
    """The image paths, in store order, beside a decoded store (see `carclf.data.store`)."""
    return Path(image_store).with_suffix(".paths.json")


def stored_batch_reader(image_store: str | Path, size: int, paths: pd.Series):
    """A function (positions, rotation, flip) → float32 batch over the store's memory map, and the
    store positions of `paths`."""
    pixels = np.load(image_store, mmap_mode="r")
    stored = pd.Index(json.loads(store_paths_file(image_store).read_text()))
    positions = stored.get_indexer(paths.astype(str))
    if pixels.shape[1:] != (size, size, 3) or (positions < 0).any():
        missing = paths[positions < 0].head(3).tolist()
        raise DatasetError(f"{image_store}: this decoded store does not hold these {size} px images "
                           f"(e.g. {missing}); rebuild it")
    whole = tf.constant([0.0, 0.0, float(size), float(size)])

    def read(positions: tf.Tensor, rotation_degrees: float, horizontal_flip: bool) -> tf.Tensor:
        images = tf.numpy_function(lambda p: pixels[p], [positions], tf.uint8, stateful=False)
        images.set_shape([None, size, size, 3])
        if rotation_degrees == 0 and not horizontal_flip:
            return tf.cast(images, tf.float32)
        return augment_views(images, whole, size, rotation_degrees, horizontal_flip)

    return read, positions


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
            decode(path)
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
