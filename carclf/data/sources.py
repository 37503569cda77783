"""One entry point from a `DataConfig` to a checked, split dataset table."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from carclf.config import DataConfig
from carclf.data.annotations import read_csv_annotations, read_devkit_annotations, read_folder_annotations
from carclf.data.checks import check_index
from carclf.data.splits import split_train_validation
from carclf.data.synthetic import generate_synthetic_cars
from carclf.data.table import DatasetError
from carclf.files import cache_home

logger = logging.getLogger(__name__)


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


def index_dataset(data: DataConfig) -> pd.DataFrame:
    """Read, check and split the dataset: the one table every trial trains from."""
    root = dataset_root(data)
    table = read_annotations(data, root)
    table, report = check_index(table, root, skip_bad_rows=data.skip_bad_rows)
    table = split_train_validation(table, data.validation_fraction, data.seed).reset_index(drop=True)
    counts = table["split"].value_counts().to_dict()
    logger.info("indexed %s: %s rows (%s), %d skipped", root, len(table), counts, report.skipped)
    return table
