"""Batches from plain numpy: fixed shapes, seeded order, the same images per epoch at any batch size.

Training reads a stream of shuffled passes over its rows: pass p is a permutation seeded by
(seed, p), and epoch e takes the next `epoch_images` images of that stream, in batches of exactly
`batch_size` (an epoch may end inside a pass; the next one starts there). So every batch has the
same shape (a new shape would mean a new XLA compile), an epoch holds the same number of images
whatever the batch size (ASHA's rungs compare trials that saw the same amount of data), and a
run restored at epoch e reads exactly the batches it would have read.

The batches come from a `keras.utils.PyDataset`, which every Keras backend's `fit` takes;
The caller sets `epoch` before each epoch (`carclf.train.TrainingRun` trains one epoch per `fit`,
which must not shuffle: the order is this class's); `workers > 1` prefetches in threads (numpy's
gathers from a memory map release the GIL).
Evaluation pads its last batch (`padded_batches`) instead of dropping it.
"""

from __future__ import annotations

import math
from functools import lru_cache, reduce
from typing import Callable, Iterator, Sequence

import keras
import numpy as np

Reader = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def epoch_images(train_rows: int, batch_sizes: Sequence[int]) -> int:
    """Images per epoch for a run (or a search) using `batch_sizes`: one pass over the training rows,
    rounded down to a multiple of every batch size, so each size fills whole batches.

    When no multiple of all of them fits in one pass, it is a multiple of the largest, and the
    others' epochs are short by less than one batch (`TrainingBatches` counts the images exactly).
    """
    if train_rows < max(batch_sizes):
        raise ValueError(f"{train_rows} training images cannot fill one batch of {max(batch_sizes)}")
    common = reduce(math.lcm, batch_sizes)
    step = common if common <= train_rows else max(batch_sizes)
    return train_rows // step * step


class TrainingBatches(keras.utils.PyDataset):
    """One epoch of (inputs, labels) batches per Keras epoch; see the module docstring.

    `read(rows, rng)` returns the inputs for those rows: pixels from the store, or cached
    features (where `rng`, seeded by epoch and step, picks an augmented view).
    """

    def __init__(self, read: Reader, rows: np.ndarray, labels: np.ndarray, batch_size: int, epoch_images: int, seed: int,
                 first_epoch: int = 0, workers: int = 1):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
        if epoch_images < batch_size:
            raise ValueError(f"an epoch of {epoch_images} images cannot fill one batch of {batch_size}")
        self.read, self.rows, self.labels = read, np.asarray(rows), np.asarray(labels, dtype=np.int32)
        self.batch_size, self.seed = batch_size, seed
        self.steps = epoch_images // batch_size
        self.epoch = first_epoch

    @property
    def images_per_epoch(self) -> int:
        return self.steps * self.batch_size

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        start = self.epoch * self.images_per_epoch + step * self.batch_size
        stream = np.arange(start, start + self.batch_size)
        count = len(self.rows)
        picked = np.concatenate([_pass_order(self.seed, count, p)[stream[stream // count == p] % count]
                                 for p in np.unique(stream // count)])
        picked.sort()  # ascending rows read a memory map in file order; a batch's order does not matter
        rng = np.random.default_rng([self.seed, self.epoch, step])
        return self.read(self.rows[picked], rng), self.labels[picked]


@lru_cache(maxsize=4)
def _pass_order(seed: int, count: int, number: int) -> np.ndarray:
    return np.random.default_rng([seed, number]).permutation(count)


def padded_batches(count: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Positions 0..count-1 in batches of exactly `batch_size`, the last one padded by repeating its
    final position; with each batch, how many of its rows are real. Callers drop the padding's
    outputs (zero weight), so metrics cover each row exactly once."""
    for start in range(0, count, batch_size):
        positions = np.arange(start, min(start + batch_size, count))
        real = len(positions)
        yield np.concatenate([positions, np.full(batch_size - real, positions[-1])]), real
