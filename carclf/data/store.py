"""Decode once: every image decoded, cropped and resized a single time into a shared uint8 store.

A search of many short trials would otherwise decode and crop every JPEG in every epoch of every
trial. The store is one NumPy array file (n, size, size, 3) of `carclf.data.images.load_crop`
results, which trials, the feature cache, retraining and evaluation open as a read-only memory
map, so the operating system shares its pages between all of them on a node.

The store is a cache entry (`carclf.cache`): the folder `decoded/<key>/` holds `images.npy`
and its manifest, which records each row's content digest, the rows that could not be decoded and
the array's size and SHA-256. The key hashes the image settings and every row's path, content
digest (BLAKE2b of the file's bytes) and box, so a changed file makes a new store even when its
size and timestamps stay the same, and so does a changed setting. A store without its manifest,
of the wrong size, or whose bytes do not match the checksum is named in the log and rebuilt,
never reused.

Decoding runs in worker threads: Pillow releases the GIL while it decodes and resizes, and on
2 cores two threads decoded 499 images/s against 308 for two worker processes, which pay for
pickling and the Keras import (benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from carclf.cache import CacheEntry, CacheError
from carclf.config import DataConfig
from carclf.data.images import ImageError, load_crop
from carclf.data.table import boxes
from carclf.files import require_free_space

logger = logging.getLogger(__name__)
STORE_FORMAT = 3  # 3: 16-bit, float and transparent images converted by `images.to_rgb`
STORE_FILE = "images.npy"
CHUNK_ROWS = 64
PROGRESS_FROM_ROWS = 2000  # smaller builds take a few seconds and show no bar


class StoreError(CacheError):
    """A decoded store is missing, incomplete or does not hold what its manifest promises."""


@dataclass(frozen=True)
class ImageStore:
    """A built store: the array file, and per row its content digest or the reason it failed."""

    path: Path
    digests: list[str]
    failures: dict[int, str]  # row → why the image could not be decoded


def store_entry(store: str | Path) -> CacheEntry:
    """The cache entry that holds the store array file `store`."""
    return CacheEntry.at(Path(store).parent)


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


def store_described(rows: pd.DataFrame, digests: list[str], data: DataConfig) -> dict:
    """What the stored pixels depend on, the store's key: image settings, and each row's file, content and box."""
    return {"format": STORE_FORMAT, "size": data.image_size, "crop": data.crop_to_bbox, "margin": data.bbox_margin,
            "rows": [f"{path}|{digest}|{box}" for path, digest, box in zip(rows["path"], digests, boxes(rows))]}


def build_image_store(rows: pd.DataFrame, data: DataConfig, workers: int | None = None) -> ImageStore:
    """Decode every row of `rows` into the store's cache entry, or reuse a verified store.

    Row i of the store is row i of `rows`. An image that cannot be decoded leaves zeros in its
    row and is listed in `failures`; the caller decides whether that stops the run.
    """
    digests = file_digests(rows["path"].tolist(), workers)
    entry = CacheEntry.of(data.cache_dir, "decoded", store_described(rows, digests, data))
    path = entry.folder / STORE_FILE
    manifest = entry.reuse("decoded image store")
    if manifest is None:
        shape = (len(rows), data.image_size, data.image_size, 3)
        require_free_space(entry.folder, int(np.prod(shape) * 1.05), "the decoded image store")
        logger.info("decoding %d images once into %s (%.2f GB)", len(rows), path, np.prod(shape) / 1e9)
        manifest = entry.build(lambda folder: _decode_into(folder / STORE_FILE, rows, data, shape, workers, digests))
    failures = manifest["details"]["failures"]
    return ImageStore(path, digests, {int(row): reason for row, reason in failures.items()})


def _decode_into(path: Path, rows: pd.DataFrame, data: DataConfig, shape: tuple[int, ...], workers: int | None,
                 digests: list[str]) -> dict:
    """Decode `rows` into a new array file at `path`; the manifest's details (shape, digests, failures)."""
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    failures = _decode_rows(pixels, rows, data, workers)
    pixels.flush()
    del pixels  # unmapped before the entry is renamed into place
    return {"shape": list(shape), "digests": digests, "failures": {str(row): reason for row, reason in failures.items()}}


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


def verify_store(store: str | Path, shape: tuple[int, ...] | None = None, checksum: bool = False) -> dict:
    """The manifest of a complete store (of `shape`, if given), or `StoreError` saying what is wrong.

    Checks the cache entry (`CacheEntry.manifest`: the manifest whole and for this key, the array
    file's size, with `checksum` its every byte) and the shape the manifest promises.
    """
    try:
        manifest = store_entry(store).manifest(checksum)
    except CacheError as error:
        raise StoreError(str(error)) from None
    held = tuple(manifest["details"]["shape"])
    if shape is not None and held != tuple(shape):
        raise StoreError(f"{store}: holds {list(held)} images, expected {list(shape)}")
    return manifest


def open_image_store(store: str | Path, image_size: int) -> np.ndarray:
    """The store's pixels as a read-only memory map, after the cheap checks (manifest, size, shape).

    Trials call this; the full checksum runs once, on the driver, when the store is built or reused.
    """
    held = verify_store(store)["details"]["shape"]
    if tuple(held[1:]) != (image_size, image_size, 3):
        raise StoreError(f"{store}: holds {held[1]} px images, expected {image_size} px")
    try:
        pixels = np.load(store, mmap_mode="r")
    except (OSError, ValueError) as error:  # a damaged header cannot be mapped
        raise StoreError(f"{store}: unreadable ({error})") from None
    if pixels.shape != tuple(held) or pixels.dtype != np.uint8:
        raise StoreError(f"{store}: holds {pixels.dtype} {pixels.shape}, expected uint8 {tuple(held)} (its manifest says so)")
    return pixels
