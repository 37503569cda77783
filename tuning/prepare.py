"""What the trials need, made before Ray starts: the dataset indexed, checked and decoded, and equal epochs.

Every checkable mistake in the data stops the run here, before a cluster starts. Each trial sees
the same number of training images per epoch (`train.epoch_images`) at every batch size, so
ASHA's rungs compare trials that learned from as many images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from carclf.config import ConfigError
from carclf.data.batches import epoch_images
from carclf.data.sources import prepare_dataset
from carclf.data.table import rows_for
from tuning.errors import SearchError
from tuning.experiment import Experiment
from tuning.run_folder import RunFolder


@dataclass(frozen=True)
class Prepared:
    """The table, the store and the experiment with its images per epoch resolved."""

    index: pd.DataFrame
    store: Path
    experiment: Experiment  # with train.epoch_images set for equal epochs
    seconds: float  # indexing, checking and decoding

    @property
    def validation_size(self) -> int:
        return len(rows_for(self.index, "val"))


def prepare(experiment: Experiment, resume: bool) -> Prepared:
    """Index, check and decode the dataset; fix the images per epoch. On resume, the dataset must not have changed."""
    data = experiment.settings.data
    print(f"indexing and decoding the dataset ({data.format}, {data.image_size} px) ...", flush=True)
    started = time.time()
    dataset = prepare_dataset(data)
    index = dataset.index
    folder = RunFolder(experiment.run_dir)
    if resume and folder.dataset_file.is_file() and not folder.read_dataset().equals(index):
        raise SearchError(f"{folder.dataset_file}: the dataset changed since this run started (files, annotations or settings); "
                          "start a new run instead of resuming")
    counts = index["split"].value_counts().to_dict()
    print(f"dataset: {len(index)} images, {index['label'].nunique()} classes, {counts}"
          + (f", {dataset.skipped} bad row(s) skipped" if dataset.skipped else ""), flush=True)
    train_rows = len(rows_for(index, "train"))
    sizes = experiment.batch_sizes()
    if experiment.settings.train.epoch_images:
        images = experiment.settings.train.epoch_images
        if images < max(sizes):
            raise ConfigError(f"{experiment.source} [train]: key epoch_images ({images}) must be at least the largest batch size ({max(sizes)})")
    elif max(sizes) > train_rows:
        raise ConfigError(f"{experiment.source}: a batch size of {max(sizes)} exceeds the {train_rows} training images")
    else:
        images = epoch_images(train_rows, sizes)
    return Prepared(index, dataset.store, experiment.with_settings(experiment.settings.with_train(epoch_images=images)),
                    time.time() - started)
