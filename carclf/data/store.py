"""Decode once: every image decoded, cropped and resized a single time into a shared uint8 store.

A search of many short trials would otherwise decode and crop every JPEG in every epoch of every
trial. The store is one NumPy array file (n, size, size, 3) of `carclf.data.images.load_crop`
results, which trials, the feature cache, retraining and evaluation open as a read-only memory
map, so the operating system shares its pages between all of them on a node.

Beside it, `images-<key>.json` (the manifest) records what the store promises: its key, shape,
each row's content digest, the rows that could not be decoded, and the array file's SHA-256. The
key hashes the image settings and every row's path, content digest (BLAKE2b of the file's bytes)
and box, so a changed file makes a new store even when its size and timestamps stay the same, and
so does a changed setting. The manifest is written last, after the array file
is complete and renamed into place; a store without its manifest, of the wrong size, or whose
bytes do not match the checksum is named in the log and rebuilt, never reused.

Decoding runs in worker threads: Pillow releases the GIL while it decodes and resizes, and on
2 cores two threads decoded 499 images/s against 308 for two worker processes, which pay for
pickling and the Keras import (benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from carclf.config import DataConfig
from carclf.data.images import ImageError, load_crop
from carclf.data.table import boxes
from carclf.files import atomic_path, cache_folder, read_json, remove_abandoned_partials, require_free_space, write_json

logger = logging.getLogger(__name__)
STORE_FORMAT = 3  # 3: 16-bit, float and transparent images converted by `images.to_rgb`
CHUNK_ROWS = 64
PROGRESS_FROM_ROWS = 2000  # smaller builds take a few seconds and show no bar


class StoreError(RuntimeError):
    """A decoded store is missing, incomplete or does not hold what its manifest promises."""


@dataclass(frozen=True)
class ImageStore:
    """A built store: the array file, and per row its content digest or the reason it failed."""

    path: Path
    digests: list[str]
    failures: dict[int, str]  # row → why the image could not be decoded


def manifest_path(store: str | Path) -> Path:
    return Path(store).with_suffix(".json")


def file_digests(paths: list[str], workers: int | None = None) -> list[str]:
    """Each file's BLAKE2b content digest ("" for a file that cannot be read), across threads.

    The store is keyed by content, not by size and modification time, which an edit in place can
    keep. hashlib releases the GIL while it hashes, so threads read and hash files in parallel:
    16,185 Stanford Cars JPEGs (1.9 GB) are a few seconds of work on 2 cores.
    """
    def digest(path: str) -> str:
        try:
            with open(path, "rb") as handle:
                return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        except OSError:
            return ""

    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(digest, paths, chunksize=CHUNK_ROWS))


def store_key(rows: pd.DataFrame, digests: list[str], data: DataConfig) -> str:
    """A hash of what the stored pixels depend on: image settings, and each row's file, content and box."""
    key = hashlib.sha256(json.dumps(
        {"format": STORE_FORMAT, "size": data.image_size, "crop": data.crop_to_bbox, "margin": data.bbox_margin}
    ).encode())
    for path, digest, box in zip(rows["path"], digests, boxes(rows)):
        key.update(f"{path}|{digest}|{box}\n".encode())
    return key.hexdigest()[:24]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def build_image_store(rows: pd.DataFrame, data: DataConfig, workers: int | None = None) -> ImageStore:
    """Decode every row of `rows` into `images-<key>.npy` in the cache, or reuse a verified store.

    Row i of the store is row i of `rows`. An image that cannot be decoded leaves zeros in its
    row and is listed in `failures`; the caller decides whether that stops the run.
    """
    digests = file_digests(rows["path"].tolist(), workers)
    key = store_key(rows, digests, data)
    path = cache_folder(data.cache_dir, "decoded") / f"images-{key}.npy"
    shape = (len(rows), data.image_size, data.image_size, 3)
    remove_abandoned_partials(path.parent)
    try:
        manifest = verify_store(path, shape, key, checksum=True)
        logger.info("reusing the decoded image store %s", path)
        return ImageStore(path, digests, {int(k): v for k, v in manifest["failures"].items()})
    except StoreError as error:
        if path.exists() or manifest_path(path).exists():
            logger.warning("rebuilding the decoded image store: %s", error)
    manifest_path(path).unlink(missing_ok=True)  # a store is complete only once its manifest is back
    require_free_space(path.parent, int(np.prod(shape) * 1.05), "the decoded image store")
    logger.info("decoding %d images once into %s (%.2f GB)", len(rows), path, np.prod(shape) / 1e9)
    failures = _decode_into(path, rows, data, shape, workers)
    write_json(manifest_path(path), {
        "format": STORE_FORMAT, "key": key, "shape": list(shape), "digests": digests,
        "failures": {str(row): reason for row, reason in failures.items()}, "sha256": file_sha256(path),
    })
    return ImageStore(path, digests, failures)


def _decode_into(path: Path, rows: pd.DataFrame, data: DataConfig, shape: tuple[int, ...],
                 workers: int | None) -> dict[int, str]:
    """Decode `rows` into a new array file at `path` (renamed into place when complete); the failures."""
    with atomic_path(path) as partial:
        pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        failures = _decode_rows(pixels, rows, data, workers)
        pixels.flush()
        del pixels  # unmapped before the rename
    return failures


def _decode_rows(pixels: np.ndarray, rows: pd.DataFrame, data: DataConfig, workers: int | None) -> dict[int, str]:
    """Fill `pixels` with `load_crop` of every row, in chunks across threads; the rows that failed, and why."""
    paths = rows["path"].tolist()
    row_boxes = boxes(rows) if data.crop_to_bbox else [None] * len(rows)
    failures: dict[int, str] = {}

    def decode(start: int) -> None:
        for row in range(start, min(start + CHUNK_ROWS, len(paths))):
            try:
                pixels[row] = load_crop(paths[row], row_boxes[row], data.image_size, data.bbox_margin)
            except (ImageError, OSError) as error:
                failures[row] = str(error).removeprefix(f"{paths[row]}: ")

    starts = range(0, len(paths), CHUNK_ROWS)
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool, \
            tqdm(total=len(paths), unit="image", desc="decoding", disable=len(paths) < PROGRESS_FROM_ROWS) as bar:
        for start, _ in zip(starts, pool.map(decode, starts)):
            bar.update(min(CHUNK_ROWS, len(paths) - start))
    return failures


def verify_store(path: str | Path, shape: tuple[int, ...] | None = None, key: str | None = None, checksum: bool = False) -> dict:
    """The manifest of a complete store (of `shape`, if given), or `StoreError` saying what is wrong.

    Checks the manifest, the key it was built for, the array file's header and size (a
    truncated file fails here), and with `checksum` every byte against the recorded SHA-256.
    """
    path = Path(path)
    if not manifest_path(path).is_file():
        raise StoreError(f"{path}: no manifest {manifest_path(path).name}: the store is incomplete")
    try:
        manifest = read_json(manifest_path(path))
    except (OSError, ValueError) as error:
        raise StoreError(f"{manifest_path(path)}: unreadable manifest ({error})") from None
    if manifest.get("format") != STORE_FORMAT or (key is not None and manifest.get("key") != key):
        raise StoreError(f"{path}: the manifest was written for another store (format or key differs)")
    shape = tuple(manifest.get("shape", ())) if shape is None else tuple(shape)
    if tuple(manifest.get("shape", ())) != shape:
        raise StoreError(f"{path}: holds {manifest.get('shape')} images, expected {list(shape)}")
    try:
        pixels = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:  # a truncated file cannot be mapped
        raise StoreError(f"{path}: unreadable or truncated ({error})") from None
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise StoreError(f"{path}: holds {pixels.dtype} {pixels.shape}, expected uint8 {shape} (its manifest says so)")
    if checksum and file_sha256(path) != manifest.get("sha256"):
        raise StoreError(f"{path}: its bytes do not match the checksum in {manifest_path(path).name} (changed or damaged)")
    return manifest


def open_image_store(path: str | Path, image_size: int) -> np.ndarray:
    """The store's pixels as a read-only memory map, after the cheap checks (manifest, shape, size).

    Trials call this; the full checksum runs once, on the driver, when the store is built or reused.
    """
    manifest = verify_store(path)
    if tuple(manifest["shape"][1:]) != (image_size, image_size, 3):
        raise StoreError(f"{path}: holds {manifest['shape'][1]} px images, expected {image_size} px")
    return np.load(path, mmap_mode="r")
