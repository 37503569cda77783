"""Decode once: every image decoded, cropped and resized a single time into a shared uint8 store.

A search of many short trials would otherwise re-decode and re-crop every JPEG in every epoch
of every trial. The store is one NumPy array file (n, size, size, 3), which trials open as a
read-only memory map, so the operating system shares its pages between them, and beside it the
list of image paths in the same order (`*.paths.json`), by which rows find their pixels.
Augmentation still happens per epoch, on the stored pixels.

The file name holds a hash of the image settings and of every file's path, size, modification
time and box, so a second search with the same settings reuses it, and a changed file (or a
changed box, size or margin) makes a new one. An unreadable file stops the build with its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from carclf.config import DataConfig
from carclf.data.pipeline import box_array, crop_window, decode, naming_bad_images, sample_view, store_paths_file
from carclf.files import atomic_path, cache_home, write_json

logger = logging.getLogger(__name__)
STORE_FORMAT = 1


def default_cache_dir() -> Path:
    return cache_home() / "decoded"


def store_key(index: pd.DataFrame, data: DataConfig) -> str:
    """A hash of what the stored pixels depend on: image settings, files (path, size, mtime), boxes."""
    digest = hashlib.sha256(json.dumps(
        {"format": STORE_FORMAT, "size": data.image_size, "crop": data.crop_to_bbox, "margin": data.bbox_margin}
    ).encode())
    for path, box in zip(index["path"], box_array(index)):
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{box.tolist()}\n".encode())
    return digest.hexdigest()[:24]


def build_image_store(index: pd.DataFrame, data: DataConfig, cache_dir: str | Path | None = None) -> Path:
    """Decode every row of `index` once into `cache_dir/images-<key>.npy` (reused when it exists)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / f"images-{store_key(index, data)}.npy"
    if path.is_file() and store_paths_file(path).is_file():
        logger.info("reusing the decoded image store %s", path)
        return path
    size = data.image_size
    logger.info("decoding %d images once into %s (%.1f GB)", len(index), path, len(index) * size * size * 3 / 1e9)

    def load(image_path, box):
        image = decode(image_path)
        window = crop_window(box, tf.shape(image)[0], tf.shape(image)[1], data.crop_to_bbox, data.bbox_margin)
        return tf.cast(tf.round(sample_view(image, window, size)), tf.uint8)

    images = tf.data.Dataset.from_tensor_slices((index["path"].to_numpy(dtype=str), box_array(index)))
    images = images.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(64).prefetch(tf.data.AUTOTUNE)
    write_json(store_paths_file(path), index["path"].tolist())
    with atomic_path(path) as partial, naming_bad_images(index):
        pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(index), size, size, 3))
        start = 0
        for batch in images:
            pixels[start : start + len(batch)] = batch.numpy()
            start += len(batch)
        pixels.flush()
        del pixels
    return path


