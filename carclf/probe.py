"""Does the pretrained backbone help on this dataset? A linear probe of its frozen features against a random backbone's.

Transfer can hurt: a backbone pretrained on other images (carclf's synthetic shapes, say) may
describe a user's photos worse than random weights do, and then every head-only trial of a
search is wasted. Before the trials, both backbones' pooled features of the clean training and
validation images (no augmentation) are computed once, and on each the linear head of a depth-0
trial (`carclf.model.build_head`: dropout and a softmax layer) is trained the way carclf trains it
(the experiment's `[train]` optimizer settings, `PROBE_EPOCHS` epochs) and scored by its best
validation accuracy. A probe trained as the trials train measures what a head-only trial would
get from each backbone; it costs two forward passes over train + validation and seconds of
training on 2048 numbers per image.

The verdict compares the two accuracies with their binomial standard errors on the validation
set: "better" when the pretrained probe beats the random one by more than `NOISE_Z` combined
standard errors, "not better" when it does not beat it at all, "within noise" in between.

A result is kept in the cache (the entry `probes/<key>/`, `carclf.cache`) under a key of everything
it depends on (the features' key: the store, the weights file's digest and the rows; the head's
training settings, the Keras backend), so a search run again on the same data and weights does not
probe again. The driver asks for this key and the features' key before the trials, the probe task
again; the weights file is hashed once per process for all of them (`carclf.cache.file_sha256`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from carclf.cache import CacheEntry
from carclf.config import RunSettings
from carclf.data.store import open_image_store
from carclf.data.table import rows_for
from carclf.evaluate import NOISE_Z, accuracy_standard_error
from carclf.features import extract, feature_entry
from carclf.files import read_json, write_json
from carclf.model import build_feature_extractor, build_head, compile_classifier
from carclf.runtime import configure_process, configured_backend, resolve_precision

PROBE_EPOCHS = 8
PROBE_FILE = "probe.json"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferProbe:
    """Validation accuracy of a linear probe on each backbone's frozen features, and the verdict."""

    weights: str
    pretrained_accuracy: float
    random_accuracy: float
    validation_size: int
    standard_error: float  # of the difference
    verdict: str  # "better", "within noise" or "not better"
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"linear probe on frozen features, {self.validation_size} validation images: {Path(self.weights).name} "
                f"{self.pretrained_accuracy:.3f} against random weights {self.random_accuracy:.3f} "
                f"(difference {self.pretrained_accuracy - self.random_accuracy:+.3f} ± {self.standard_error:.3f}): {self.verdict}")


def head_probe_accuracy(settings: RunSettings, train: np.ndarray, train_labels: np.ndarray, val: np.ndarray,
                        val_labels: np.ndarray, classes: int) -> float:
    """The best validation accuracy over `PROBE_EPOCHS` epochs of carclf's head trained on fixed features."""
    head = compile_classifier(build_head(classes, settings.model, settings.train.seed), settings.train)
    history = head.fit(train, train_labels, batch_size=min(settings.train.batch_size, len(train)), epochs=PROBE_EPOCHS,
                       validation_data=(val, val_labels), shuffle=True, verbose=0)
    return float(max(history.history["val_accuracy"]))


def frozen_features(index: pd.DataFrame, store, settings: RunSettings) -> tuple[np.ndarray, np.ndarray]:
    """Clean pooled features of the train and validation rows through `settings.model.weights`' frozen backbone."""
    pixels = open_image_store(store, settings.data.image_size)
    extractor = build_feature_extractor(settings.data, settings.model, resolve_precision(settings.train.precision))
    return extract(extractor, pixels, rows_for(index, "train")), extract(extractor, pixels, rows_for(index, "val"))


def probe_transfer(index: pd.DataFrame, store, settings: RunSettings) -> TransferProbe:
    """Compare the pretrained backbone (`settings.model.weights`, a file) with random weights (seeded) on this data."""
    started = time.perf_counter()
    train_labels = rows_for(index, "train")["label"].to_numpy(dtype=np.int64)
    val_labels = rows_for(index, "val")["label"].to_numpy(dtype=np.int64)
    classes = int(index["label"].max()) + 1
    accuracies = []
    for weights in (settings.model.weights, "none"):
        configure_process(None, settings.train.seed)  # the random backbone and both heads seeded alike
        train, val = frozen_features(index, store, replace(settings, model=replace(settings.model, weights=weights)))
        accuracies.append(head_probe_accuracy(settings, train, train_labels, val, val_labels, classes))
    pretrained, random = accuracies
    n = len(val_labels)
    error = float(np.hypot(*(accuracy_standard_error(p, n) for p in accuracies)))
    difference = pretrained - random
    verdict = "better" if difference > NOISE_Z * error else "not better" if difference <= 0 else "within noise"
    return TransferProbe(settings.model.weights, pretrained, random, n, error, verdict, time.perf_counter() - started)


def probe_entry(index: pd.DataFrame, store, settings: RunSettings) -> CacheEntry:
    """The cache entry of the probe of these rows, weights and head settings (see the module docstring)."""
    train, model = settings.train, settings.model
    described = {"features": feature_entry(index, store, settings).key, "epochs": PROBE_EPOCHS, "backend": configured_backend(),
                 "head": [model.dropout, train.batch_size, train.learning_rate, train.lr_decay, train.momentum,
                          train.label_smoothing, train.seed, train.precision]}
    return CacheEntry.of(settings.data.cache_dir, "probes", described)


def cached_probe(index: pd.DataFrame, store, settings: RunSettings) -> TransferProbe | None:
    """The cached probe of these rows, weights and settings, or None (a damaged entry is said and ignored)."""
    entry = probe_entry(index, store, settings)
    if entry.reuse("cached transfer probe") is None:
        return None
    try:
        return TransferProbe(**read_json(entry.folder / PROBE_FILE))
    except (ValueError, TypeError) as error:  # whole, as its manifest says, but not a probe: written by another carclf
        logger.warning("%s: unreadable cached transfer probe (%s); probing again", entry.folder, error)
        return None


def probe_transfer_cached(index: pd.DataFrame, store, settings: RunSettings) -> TransferProbe:
    """`probe_transfer`, kept in the cache for the next search on the same data and weights."""
    probe = probe_transfer(index, store, settings)

    def write(folder: Path) -> dict:
        write_json(folder / PROBE_FILE, probe.to_dict())
        return {}

    probe_entry(index, store, settings).build(write)
    return probe
