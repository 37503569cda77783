"""One entry point from a `DataConfig` to a checked, split dataset table and its decoded store.

Read the annotations (strictly), check files and boxes, decode every image once into the store,
keep test images out of training, then split train/validation: the one table every trial,
retraining and evaluation use, and the store they read pixels from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carclf.config import DataConfig
from carclf.data.annotations import read_devkit_annotations, read_folder_annotations
from carclf.data.checks import check_files, check_split_overlap, drop_bad_rows
from carclf.data.csv_annotations import read_csv_annotations
from carclf.data.splits import split_train_validation
from carclf.data.store import build_image_store
from carclf.data.synthetic import generate_synthetic_cars
from carclf.data.table import DatasetError, class_names, make_table
from carclf.files import cache_home

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedDataset:
    """The dataset table (with each row's `store_row`), the store's array file, and rows skipped."""

    index: pd.DataFrame
    store: Path
    skipped: int


def default_synthetic_root() -> Path:
    """Where the demo data is generated unless `data.root` says otherwise."""
    return cache_home() / "synthetic_cars"


def dataset_root(data: DataConfig) -> Path:
    """The folder the dataset lives in (the synthetic one is generated there when absent)."""
    if data.format == "synthetic":
        return generate_synthetic_cars(Path(data.root).expanduser() if data.root else default_synthetic_root())
    root = Path(data.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found (data.root / --data-dir)")
    return root


def read_annotations(data: DataConfig, root: Path) -> pd.DataFrame:
    """The unchecked table from whichever annotation format `data.format` names."""
    if data.format in ("synthetic", "devkit"):
        return read_devkit_annotations(root)
    if data.format == "csv":
        return read_csv_annotations(root / data.csv_file, root)
    return read_folder_annotations(root)


def prepare_dataset(data: DataConfig, workers: int | None = None) -> PreparedDataset:
    """Read, check, decode once and split the dataset."""
    root = dataset_root(data)
    table = read_annotations(data, root)
    table, report = check_files(table, root, skip_bad_rows=data.skip_bad_rows)
    table = table.reset_index(drop=True)
    store = build_image_store(table, data, workers)
    table = table.assign(store_row=np.arange(len(table)))
    undecodable = {row: ("unreadable image", reason) for row, reason in store.failures.items()}
    table, report = drop_bad_rows(table, undecodable, data.skip_bad_rows, str(root), report)
    table, report = check_split_overlap(table, [store.digests[row] for row in table["store_row"]], data.skip_bad_rows,
                                        str(root), report)
    digests = [store.digests[row] for row in table["store_row"]]
    table = split_train_validation(table, data.validation_fraction, data.seed, groups=digests).reset_index(drop=True)
    require_usable_splits(table, str(root))
    counts = table["split"].value_counts().to_dict()
    logger.info("indexed %s: %s rows (%s), %d skipped", root, len(table), counts, report.skipped)
    return PreparedDataset(make_table(table), store.path, report.skipped)


def require_usable_splits(index: pd.DataFrame, where: str) -> None:
    """Every class keeps training rows, and validation has rows: what a search needs to start."""
    train = index[index["split"] == "train"]
    if train.empty:
        raise DatasetError(f"{where}: no usable training images")
    known = index.dropna(subset=["label"]).drop_duplicates("label")
    lost = known[~known["label"].isin(train["label"])]
    if len(lost):
        names = ", ".join(repr(name) for name in lost["class_name"].head(5))
        raise DatasetError(f"{where}: {len(lost)} class(es) have no usable training images left: {names}")
    if not (index["split"] == "val").any():
        raise DatasetError(f"{where}: the validation split is empty: every class has a single training image "
                           "(add images, or raise data.validation_fraction)")
    class_names(index)
