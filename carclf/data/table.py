"""The dataset table: one schema for every source, one row per image, stored as Parquet.

`source` says where a row came from ("cars_train_annos.mat record 12", "labels.csv line 7"), so
every later problem can name the file and line. `store_row` is the row's place in the decoded
image store (`carclf.data.store`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from carclf.files import atomic_path

BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
COLUMNS = ["path", "label", "class_name", *BBOX_COLUMNS, "split", "source", "store_row"]


class DatasetError(ValueError):
    """The dataset on disk does not match what its annotations say."""


def make_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Coerce `rows` to the schema: string paths, nullable integer labels and boxes, split names."""
    table = rows.copy()
    for column in COLUMNS:
        if column not in table:
            table[column] = pd.NA
    table = table[COLUMNS]
    for column in ("path", "class_name", "split", "source"):
        table[column] = table[column].astype("string")
    for column in ["label", *BBOX_COLUMNS, "store_row"]:
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    return table


def class_names(index: pd.DataFrame) -> list[str]:
    """Class names ordered by label (label i is `class_names(index)[i]`)."""
    labeled = index.dropna(subset=["label"]).drop_duplicates("label").sort_values("label")
    names = labeled["class_name"].tolist()
    if labeled["label"].tolist() != list(range(len(names))):
        raise DatasetError("labels are not the contiguous range 0..N-1: some class has no labeled rows")
    return names


def rows_for(index: pd.DataFrame, *splits: str) -> pd.DataFrame:
    """The rows of the given splits, in table order (e.g. `rows_for(index, "train", "val")` to retrain)."""
    return index[index["split"].isin(splits)]


def boxes(rows: pd.DataFrame) -> list[tuple[int, int, int, int] | None]:
    """Each row's (x1, y1, x2, y2), or None where the row has no box."""
    values = rows[BBOX_COLUMNS]
    present = values.notna().all(axis=1).to_numpy()
    numbers = values.fillna(0).to_numpy(dtype="int64")
    return [tuple(int(v) for v in box) if has else None for box, has in zip(numbers, present)]


def save_index(index: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as Parquet, atomically (a temporary name renamed into place)."""
    with atomic_path(path) as partial:
        make_table(index).to_parquet(partial, index=False)
    return Path(path)


def load_index(path: str | Path) -> pd.DataFrame:
    """Read a table written by `save_index`."""
    return make_table(pd.read_parquet(path))
