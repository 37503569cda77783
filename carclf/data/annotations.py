"""Readers that turn a car dataset's annotations into the dataset table (`carclf.data.table`).

Three layouts: the Stanford Cars devkit (`.mat` files), a CSV, and one folder per class. Every
value is parsed strictly: a box that is not four whole numbers, a blank or unknown class, a blank
path or a bad split stops the reader with the file and the line (or record). Whether the images
exist and the boxes fit them is `carclf.data.checks`' job, so both run on any source.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.io

from carclf.data.table import BBOX_COLUMNS, DatasetError, make_table

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
DEVKIT_FIELDS = {"bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"}
FILE_COLUMNS = ("path", "file", "fname", "filename", "image")
CLASS_COLUMNS = ("class_name", "class", "label", "class_id")
CSV_SPLITS = ("train", "test")
# Cells pandas reads as missing by default (read_csv's na_values): as a class they are a blank, not a name.
MISSING_CELLS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
                 "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
SHOWN_UNREAD = 5


def _find_devkit_file(root: Path, name: str) -> Path | None:
    for folder in (root / "devkit", root):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_mat(path: Path, variable: str) -> np.ndarray:
    try:
        contents = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for a damaged file
        raise DatasetError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DatasetError(f"{path}: has no variable {variable!r} (found {found})")
    return np.atleast_1d(contents[variable])


def _whole_number(value: Any, where: str, what: str) -> int:
    """`value` as an int, or an error naming `where`: 12, 12.0 and "12" pass; 12.5, "", "abc" do not."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {what} {value!r} is not a number") from None
    if not np.isfinite(number) or number != int(number):
        raise DatasetError(f"{where}: {what} {value!r} is not a whole number")
    return int(number)


def _devkit_records(path: Path, labeled: bool) -> list[dict[str, Any]]:
    annotations = _load_mat(path, "annotations")
    fields = set(annotations.dtype.names or ())
    required = DEVKIT_FIELDS | ({"class"} if labeled else set())
    missing = sorted(required - fields)
    if missing:
        raise DatasetError(f"{path}: annotations lack field(s) {missing} (found {sorted(fields)})")
    records = []
    for number, record in enumerate(annotations, start=1):
        where = f"{path}: record {number}"
        name = record["fname"]
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{where}: fname {name!r} is not a file name")
        values = {column: _whole_number(record[column], f"{where} ({name})", column)
                  for column in BBOX_COLUMNS + (["class"] if labeled else [])}
        records.append({"fname": name.strip(), "source": f"{path.name} record {number}", **values})
    return records


def read_devkit_annotations(root: str | Path) -> pd.DataFrame:
    """Read the Stanford Cars devkit layout under `root`.

    Expects `cars_meta.mat` and `cars_train_annos.mat` (in `root/devkit/` or `root/`), images in
    `root/cars_train/` and `root/cars_test/`, and for the test split either
    `cars_test_annos_withlabels.mat` (labeled) or `cars_test_annos.mat` (unlabeled: rows keep no
    label so predictions can be written for them). `class` in the files is 1-based.
    """
    root = Path(root).resolve()
    meta_path = _find_devkit_file(root, "cars_meta.mat")
    train_path = _find_devkit_file(root, "cars_train_annos.mat")
    if meta_path is None or train_path is None:
        raise DatasetError(f"{root}: not a Stanford Cars devkit layout (need devkit/cars_meta.mat and devkit/cars_train_annos.mat)")
    names = [str(name) for name in _load_mat(meta_path, "class_names")]
    check_distinct_names(((name, f"{meta_path.name} entry {i}") for i, name in enumerate(names, start=1)), str(meta_path))

    frames = [_devkit_frame(train_path, root / "cars_train", "train", names, labeled=True)]
    labeled_test = _find_devkit_file(root, "cars_test_annos_withlabels.mat")
    unlabeled_test = _find_devkit_file(root, "cars_test_annos.mat")
    if labeled_test is not None:
        frames.append(_devkit_frame(labeled_test, root / "cars_test", "test", names, labeled=True))
    elif unlabeled_test is not None:
        frames.append(_devkit_frame(unlabeled_test, root / "cars_test", "test", names, labeled=False))
    table = pd.concat(frames, ignore_index=True)
    _require_every_class(table, names, f"{train_path}")
    return make_table(table)


def _devkit_frame(path: Path, image_dir: Path, split: str, names: list[str], labeled: bool) -> pd.DataFrame:
    records = _devkit_records(path, labeled)
    frame = pd.DataFrame.from_records(records, columns=["fname", "source", *BBOX_COLUMNS, *(["class"] if labeled else [])])
    frame["path"] = [str(image_dir / name) for name in frame["fname"]]
    frame["split"] = split
    if labeled:
        bad = frame[(frame["class"] < 1) | (frame["class"] > len(names))]
        if len(bad):
            first = bad.iloc[0]
            raise DatasetError(
                f"{path}: {first['source'].split(' ', 1)[1]} ({first['fname']}): class {first['class']} is outside "
                f"1..{len(names)} ({len(bad)} record(s) out of range)"
            )
        frame["label"] = frame["class"] - 1
        frame["class_name"] = [names[label] for label in frame["label"]]
    return frame


def _require_every_class(table: pd.DataFrame, names: list[str], source: str) -> None:
    present = set(table.loc[table["split"] == "train", "label"].dropna().astype(int))
    empty = [f"{i} {names[i]!r}" for i in range(len(names)) if i not in present]
    if empty:
        raise DatasetError(f"{source}: {len(empty)} class(es) have no training images: {', '.join(empty[:5])}")


def check_distinct_names(names: Iterable[tuple[str, str]], where: str) -> None:
    """Refuse class names that differ only in case or surrounding spaces ("Audi A4" and "audi a4 ").

    They are almost always one class spelt two ways, and as two classes they would split its
    images and its accuracy in two. `names` holds (name, where it was found) pairs.
    """
    spellings: dict[str, dict[str, str]] = defaultdict(dict)
    for name, found_at in names:
        spellings[name.strip().casefold()].setdefault(name, found_at)
    clashes = [variants for variants in spellings.values() if len(variants) > 1]
    if clashes:
        shown = "; ".join(" and ".join(f"{name!r} ({found_at})" for name, found_at in variants.items()) for variants in clashes[:3])
        raise DatasetError(f"{where}: {len(clashes)} class name(s) differ only in case or surrounding spaces: {shown}. "
                           "Spell each class one way.")


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
    bad_split = frame[~frame["split"].isin(CSV_SPLITS)]
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
    _require_every_class(frame, names, str(csv_path))
    return make_table(frame.reset_index(drop=True))


def _csv_box(cells: list[str], where: str) -> list[int | None]:
    """Four whole numbers, or four empty cells for "no box"; anything else names the line."""
    if all(cell == "" for cell in cells):
        return [None] * 4
    values = []
    for column, cell in zip(BBOX_COLUMNS, cells):
        if cell == "":
            raise DatasetError(f"{where}: {column} is empty but other box cells are not (give all four, or none)")
        values.append(_whole_number(cell, where, column))
    return values


def _pick_column(raw: pd.DataFrame, candidates: tuple[str, ...], path: Path, role: str) -> str:
    for name in candidates:
        if name in raw.columns:
            return name
    raise DatasetError(f"{path}: no {role} column: expected one of {list(candidates)}, found {list(raw.columns)}")


def read_folder_annotations(root: str | Path) -> pd.DataFrame:
    """Read `root/train/<class name>/*.jpg` and optionally `root/test/<class name>/*.jpg`.

    Classes are the sorted folder names under `train/`; a test folder naming another class, or a
    class folder with no images, is an error. Hidden entries (`.DS_Store`, `._*` AppleDouble files,
    `.name/` folders: what a Mac or a tool leaves behind) are ignored. Anything else that is not
    read (other extensions, nested folders, files beside the class folders) is counted and named
    in a warning, so no image is dropped without a word.
    """
    root = Path(root).resolve()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"{root}: no train/ folder (expected train/<class name>/ and optionally test/<class name>/)")
    names = sorted(p.name for p in _visible(train_dir) if p.is_dir())
    if not names:
        raise DatasetError(f"{train_dir}: has no class folders")
    check_distinct_names(((name, f"train/{name}/") for name in names), str(train_dir))
    lookup = {name: i for i, name in enumerate(names)}
    rows, unread = [], []
    for split in CSV_SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in _visible(split_dir):
            if not class_dir.is_dir():
                unread.append(class_dir)
                continue
            if class_dir.name not in lookup:
                raise DatasetError(f"{class_dir}: class {class_dir.name!r} has no folder under {train_dir}")
            entries = _visible(class_dir)
            readable = [p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries]
            images = [p for p, ok in zip(entries, readable) if ok]
            unread += [p for p, ok in zip(entries, readable) if not ok]
            if not images and split == "train":
                raise DatasetError(f"{class_dir}: class {class_dir.name!r} has no images (.jpg, .jpeg, .png)")
            rows += [{"path": str(p), "label": lookup[class_dir.name], "class_name": class_dir.name, "split": split,
                      "source": f"{split}/{class_dir.name}/{p.name}"} for p in images]
    if unread:
        shown = ", ".join(f"{p.relative_to(root)}{'/' if p.is_dir() else ''}" for p in unread[:SHOWN_UNREAD])
        more = f" and {len(unread) - SHOWN_UNREAD} more" if len(unread) > SHOWN_UNREAD else ""
        logger.warning("%s: %d entr(ies) not read: %s%s (only .jpg, .jpeg and .png files directly in <split>/<class name>/ are)",
                       root, len(unread), shown, more)
    return make_table(pd.DataFrame(rows))


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` whose names do not start with a dot, sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
