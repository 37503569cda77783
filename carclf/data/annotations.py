"""Readers that turn a car dataset's annotations into the dataset table (`carclf.data.table`).

Three layouts: the Stanford Cars devkit (`.mat` files) and one folder per class here, and a CSV
(`carclf.data.csv_annotations`), which shares the checks below. Every value is parsed strictly:
a box that is not four whole numbers, a blank or unknown class, a blank path or a bad split
stops the reader with the file and the line (or record). Whether the images exist and the boxes
fit them is `carclf.data.checks`' job, so both run on any source.
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
SPLITS = ("train", "test")  # the splits a dataset may name; validation is split off training (carclf.data.splits)
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


def whole_number(value: Any, where: str, what: str) -> int:
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
        values = {column: whole_number(record[column], f"{where} ({name})", column)
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
    require_every_class(table, names, f"{train_path}")
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


def require_every_class(table: pd.DataFrame, names: list[str], source: str) -> None:
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
    for split in SPLITS:
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
