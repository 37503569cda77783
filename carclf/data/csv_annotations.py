"""A CSV of annotations: a file column, a class column, and optional box and split columns.

Each cell is parsed strictly, with the checks every reader shares (`carclf.data.annotations`): a
box that is not four whole numbers or four empty cells, a blank or unknown class, a blank path or
a bad split stops the reader with the file and the line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from carclf.data.annotations import SPLITS, check_distinct_names, require_every_class, whole_number
from carclf.data.table import BBOX_COLUMNS, DatasetError, make_table

FILE_COLUMNS = ("path", "file", "fname", "filename", "image")
CLASS_COLUMNS = ("class_name", "class", "label", "class_id")
# Cells pandas reads as missing by default (read_csv's na_values): as a class they are a blank, not a name.
MISSING_CELLS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
                 "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def read_csv_annotations(csv_path: str | Path, root: str | Path | None = None, class_names: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV with a file column, a class column and optional bounding-box and split columns.

    File paths are relative to `root` (default: the CSV's folder). The class column holds names,
    or 0-based integer ids; `class_names`, when given, fixes the classes and their order, and a
    name or id outside it is an error. Without a `split` column every row is a training row. A
    row's box is four whole numbers or four empty cells (no box).
    """
    csv_path = Path(csv_path).resolve()
    root = Path(root).resolve() if root else csv_path.parent
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: CSV file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{csv_path}: not a readable CSV ({error})") from None
    raw.columns = [str(column).strip() for column in raw.columns]
    if raw.empty:
        raise DatasetError(f"{csv_path}: has a header but no rows (expected one row per image)")
    raw.index = pd.Index(range(2, len(raw) + 2), name="line")  # line 1 is the header
    file_column = _pick_column(raw, FILE_COLUMNS, csv_path, "file")
    class_column = _pick_column(raw, CLASS_COLUMNS, csv_path, "class")
    # Class names keep their spaces, so "Audi A4" and "Audi A4 " are reported rather than merged.
    raw = raw.apply(lambda column: column if column.name == class_column else column.str.strip())
    present_boxes = [c for c in BBOX_COLUMNS if c in raw]
    if present_boxes and len(present_boxes) != len(BBOX_COLUMNS):
        missing = sorted(set(BBOX_COLUMNS) - set(present_boxes))
        raise DatasetError(f"{csv_path}: has some bounding-box columns but not {missing}")

    frame = pd.DataFrame(index=raw.index)
    frame["source"] = [f"{csv_path.name} line {line}" for line in raw.index]
    for line, name in raw[file_column].items():
        if not name:
            raise DatasetError(f"{csv_path}: line {line}: the {file_column!r} cell is empty (expected an image file)")
    frame["path"] = [str(root / name) for name in raw[file_column]]
    if present_boxes:
        frame[BBOX_COLUMNS] = [_csv_box(raw.loc[line, BBOX_COLUMNS].tolist(), f"{csv_path}: line {line}") for line in raw.index]
    frame["split"] = raw["split"] if "split" in raw else "train"
    bad_split = frame[~frame["split"].isin(SPLITS)]
    if len(bad_split):
        raise DatasetError(f"{csv_path}: line {bad_split.index[0]}: split {bad_split['split'].iloc[0]!r} is not 'train' or 'test'")

    classes = raw[class_column]
    blank = classes[classes.str.strip().isin(MISSING_CELLS)]
    if len(blank):
        value = blank.iloc[0]
        what = "is empty" if not value.strip() else f"holds {value!r}, which reads as a missing value"
        raise DatasetError(f"{csv_path}: line {blank.index[0]}: the {class_column!r} cell {what} "
                           f"({len(blank)} row(s) without a class)")
    if classes.str.fullmatch(r"\d+").all():
        ids = classes.astype(int)
        names = class_names or [str(i) for i in range(int(ids.max()) + 1)]
        out_of_range = ids[ids >= len(names)]
        if len(out_of_range):
            line = out_of_range.index[0]
            raise DatasetError(f"{csv_path}: line {line}: class id {ids[line]} is outside 0..{len(names) - 1}")
        frame["label"] = ids
    else:
        check_distinct_names(((name, f"line {line}") for line, name in classes.items()), str(csv_path))
        names = class_names or sorted(classes[frame["split"] == "train"].unique())
        lookup = {name: i for i, name in enumerate(names)}
        unknown = classes[~classes.isin(list(lookup))]
        if len(unknown):
            line = unknown.index[0]
            raise DatasetError(
                f"{csv_path}: line {line}: unknown class name {classes[line]!r} "
                f"({len(unknown)} row(s) name classes with no training rows or outside the class list)"
            )
        frame["label"] = classes.map(lookup)
    frame["class_name"] = [names[label] for label in frame["label"]]
    require_every_class(frame, names, str(csv_path))
    return make_table(frame.reset_index(drop=True))


def _csv_box(cells: list[str], where: str) -> list[int | None]:
    """Four whole numbers, or four empty cells for "no box"; anything else names the line."""
    if all(cell == "" for cell in cells):
        return [None] * 4
    values = []
    for column, cell in zip(BBOX_COLUMNS, cells):
        if cell == "":
            raise DatasetError(f"{where}: {column} is empty but other box cells are not (give all four, or none)")
        values.append(whole_number(cell, where, column))
    return values


def _pick_column(raw: pd.DataFrame, candidates: tuple[str, ...], path: Path, role: str) -> str:
    for name in candidates:
        if name in raw.columns:
            return name
    raise DatasetError(f"{path}: no {role} column: expected one of {list(candidates)}, found {list(raw.columns)}")
