"""Cached frozen features: head-only epochs train on the backbone's outputs, computed once per search.

While the backbone is frozen (unfreeze depth 0, or the first phase of two-phase fine-tuning) its
pooled output for an image changes between epochs only through augmentation. So the frozen
network runs once over `views` augmented views of every training and validation image (each
view's angles and flips seeded by (seed, view), and for validation images by (seed, view, 1)) and
once over the clean validation images, through the very layers a depth-0 classifier uses
(`carclf.layers.flip_and_rotate`, `carclf.model.pooled_features`), and the features are kept in
float32. Each training epoch then draws, for every image, one of its views at random (seeded);
validation sees the same features the network would compute. A trial trains on the training
images' views; the winner's retraining on train + validation (`tuning.deliver`) trains its head
epochs on both splits' views, as its trial trained them, instead of through the frozen network.

The cache is an entry (`carclf.cache`) `features/<key>/` of `.npy` files read as memory maps, with
a manifest written last. The key covers everything the features depend on: the weights file's
content (its digest computed once per process, `carclf.cache.file_sha256`), the decoded store (its
key: each image file's content digest, boxes, image settings), each row's label and split, the
augmentation, the number of views and the seed; a truncated file or one whose bytes do not match
the manifest's checksum is named and rebuilt. Random weights (`"none"`) are never cached: such a
backbone is rebuilt differently by every trial.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from keras import ops

from carclf.cache import CacheEntry, CacheError, file_sha256
from carclf.config import RunSettings
from carclf.data.store import open_image_store, verify_store
from carclf.data.table import rows_for
from carclf.evaluate import predict_rows
from carclf.layers import compiled_flip_and_rotate
from carclf.model import build_feature_extractor
from carclf.progress import ProgressFile
from carclf.runtime import resolve_precision

logger = logging.getLogger(__name__)
FEATURES_FORMAT = 3  # 3: augmented views of the validation images too
EXTRACT_BATCH = 64


class FeatureCacheError(CacheError):
    """A feature cache folder is incomplete or does not hold what its manifest promises."""


@dataclass(frozen=True)
class HeadFeatures:
    """Features for head-only epochs, memory-mapped, rows in table order: `train` (views, n, 2048),
    `val` (m, 2048, clean) and `val_views` (views, m, 2048)."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_views: np.ndarray
    val_labels: np.ndarray

    def training_views(self, splits: tuple[str, ...]) -> FeatureViews:
        """The views a run training on `splits` ("train", or "train" and "val") draws from."""
        if splits == ("train",):
            return FeatureViews((self.train,), self.train_labels)
        if splits == ("train", "val"):
            return FeatureViews((self.train, self.val_views), np.concatenate([self.train_labels, self.val_labels]))
        raise ValueError(f"no cached features for training on {splits}")


@dataclass(frozen=True)
class FeatureViews:
    """The cached views of a run's training images: `pools` (views, n_i, 2048) side by side, positions
    numbered across them in order, with their `labels`."""

    pools: tuple[np.ndarray, ...]
    labels: np.ndarray

    def draw(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One view of each image at `positions`, each view drawn at random."""
        views = rng.integers(len(self.pools[0]), size=len(positions))
        if len(self.pools) == 1:
            return self.pools[0][views, positions]
        drawn = np.empty((len(positions), self.pools[0].shape[-1]), np.float32)
        start = 0
        for pool in self.pools:
            inside = (positions >= start) & (positions < start + pool.shape[1])
            drawn[inside] = pool[views[inside], positions[inside] - start]
            start += pool.shape[1]
        return drawn


def can_cache_features(settings: RunSettings) -> bool:
    return settings.train.feature_views > 0 and settings.model.pretrained


def feature_entry(index: pd.DataFrame, store: str | Path, settings: RunSettings) -> CacheEntry:
    """The cache entry of the features for `settings` (see the module docstring)."""
    data, weights = settings.data, settings.model.weights
    rows = rows_for(index, "train", "val")
    described = {
        "format": FEATURES_FORMAT, "store": verify_store(store)["key"], "weights": file_sha256(weights),
        "views": settings.train.feature_views, "seed": settings.train.seed,
        "flip": data.horizontal_flip, "rotation": data.rotation_degrees,
        "rows": rows[["store_row", "label", "split"]].astype(str).to_numpy().tolist(),
    }
    return CacheEntry.of(data.cache_dir, "features", described)


def view_transforms(count: int, view: int, settings: RunSettings, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The angles (radians) and flips of augmented view `view` of `count` images of `split`: seeded, repeatable."""
    rng = np.random.default_rng([settings.train.seed, view] + ([1] if split == "val" else []))
    limit = math.radians(settings.data.rotation_degrees)
    angles = rng.uniform(-limit, limit, count).astype(np.float32)
    flips = rng.random(count) < 0.5 if settings.data.horizontal_flip else np.zeros(count, bool)
    return angles, flips


def cached_head_features(index: pd.DataFrame, store: str | Path, settings: RunSettings) -> Path | None:
    """The verified feature folder for `settings`, or None when it must be built (a damaged one is named)."""
    entry = feature_entry(index, store, settings)
    return entry.folder if entry.reuse("cached features") is not None else None


def build_head_features(index: pd.DataFrame, store: str | Path, settings: RunSettings, progress: str | Path | None = None) -> Path:
    """Compute (or reuse, once verified) the feature folder for `settings`; returns its path.

    `progress` names a file told each finished pass (`carclf.progress`)."""
    entry = feature_entry(index, store, settings)
    if entry.reuse("cached features") is not None:
        return entry.folder
    views = settings.train.feature_views
    train_rows, validation_rows = rows_for(index, "train"), rows_for(index, "val")
    logger.info("computing frozen features: %d views of %d training and %d validation images, and the validation images clean",
                views, len(train_rows), len(validation_rows))
    pixels = open_image_store(store, settings.data.image_size)
    extractor = build_feature_extractor(settings.data, settings.model, resolve_precision(settings.train.precision))

    def write(folder: Path) -> dict:
        told = ProgressFile(progress, "computing the feature cache (passes over the images)", 2 * views + 1)
        for passes, (split, rows, file) in enumerate((("train", train_rows, "train.npy"), ("val", validation_rows, "val_views.npy"))):
            stored = np.lib.format.open_memmap(folder / file, "w+", np.float32, (views, len(rows), extractor.output_shape[-1]))
            for view in range(views):
                stored[view] = extract(extractor, pixels, rows, *view_transforms(len(rows), view, settings, split))
                told.update(passes * views + view + 1)
            stored.flush()
            del stored
        np.save(folder / "val.npy", extract(extractor, pixels, validation_rows))
        told.update(2 * views + 1)
        return {"views": views, "train_labels": train_rows["label"].astype(int).tolist(),
                "val_labels": validation_rows["label"].astype(int).tolist()}

    entry.build(write)
    return entry.folder


def extract(extractor, pixels: np.ndarray, rows: pd.DataFrame, angles: np.ndarray | None = None,
            flips: np.ndarray | None = None) -> np.ndarray:
    """Pooled features of `rows`' stored pixels, each view flipped and rotated as given (none: clean)."""
    def prepare(images: np.ndarray, positions: np.ndarray):
        if angles is not None:
            images = compiled_flip_and_rotate(images, angles[positions], flips[positions])
        return ops.cast(images, "float32")

    return predict_rows(extractor, pixels, rows["store_row"].to_numpy(dtype=np.int64), EXTRACT_BATCH, prepare)


def open_head_features(folder: str | Path) -> HeadFeatures:
    """The cached features as memory maps (pages shared by every trial on the node), after the cheap checks."""
    try:
        details = CacheEntry.at(folder).manifest()["details"]
    except CacheError as error:
        raise FeatureCacheError(str(error)) from None
    folder = Path(folder)
    return HeadFeatures(train=np.load(folder / "train.npy", mmap_mode="r"),
                        train_labels=np.asarray(details["train_labels"], dtype=np.int32),
                        val=np.load(folder / "val.npy", mmap_mode="r"),
                        val_views=np.load(folder / "val_views.npy", mmap_mode="r"),
                        val_labels=np.asarray(details["val_labels"], dtype=np.int32))
