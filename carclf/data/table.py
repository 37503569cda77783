"""The dataset table: one schema for every source, one row per image, stored as Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from carclf.files import atomic_path

BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
COLUMNS = ["path", "label", "class_name", *BBOX_COLUMNS, "split"]
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """The dataset on disk does not match what its annotations say."""


def make_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Coerce `rows` to the schema: string paths, nullable integer labels and boxes, split names."""
    table = rows.copy()
    for column in COLUMNS:
        if column not in table:
            table[column] = pd.NA
    table = table[COLUMNS]
    table["path"] = table["path"].astype("string")
    table["class_name"] = table["class_name"].astype("string")
    table["split"] = table["split"].astype("string")
    for column in ["label", *BBOX_COLUMNS]:
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    return table


def class_names(index: pd.DataFrame) -> list[str]:
    """Class names ordered by label (label i is `class_names(index)[i]`)."""
    labeled = index.dropna(subset=["label"]).drop_duplicates("label").sort_values("label")
    names = labeled["class_name"].tolist()
    if labeled["label"].tolist() != list(range(len(names))):
        raise DatasetError("labels are not the contiguous range 0..N-1: some class has no labeled rows")
    return names


def save_index(index: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as Parquet, atomically (a temporary name renamed into place)."""
    with atomic_path(path) as partial:
        make_table(index).to_parquet(partial, index=False)
    return Path(path)


def load_index(path: str | Path) -> pd.DataFrame:
    """Read a table written by `save_index`."""
    return make_table(pd.read_parquet(path))
