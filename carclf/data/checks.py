"""Checks of a dataset table against the files on disk, with errors a user can act on.

Every problem names the row's source (file and line) and the image. By default any problem stops
the run; with `skip_bad_rows` the bad rows are dropped and counted instead: nothing is dropped
silently. `check_files` reads only image headers, and refuses a row that repeats another; the full decode happens once, in the store
(`carclf.data.store`), which reports unreadable images the same way. `check_split_overlap` keeps
a test image (the same file, or the same bytes under another name) out of training.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from carclf.data.images import ImageError, oriented_size, region_problem
from carclf.data.table import DatasetError, boxes

logger = logging.getLogger(__name__)
SHOWN_PER_PROBLEM = 3


@dataclass
class CheckReport:
    """What the checks found: problem kind → [(source, path, detail)], and how many rows were skipped."""

    problems: dict[str, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))
    skipped: int = 0

    def describe(self) -> str:
        parts = []
        for kind, items in self.problems.items():
            shown = "; ".join(f"{source} {path}{': ' + detail if detail else ''}" for source, path, detail in items[:SHOWN_PER_PROBLEM])
            more = f"; and {len(items) - SHOWN_PER_PROBLEM} more" if len(items) > SHOWN_PER_PROBLEM else ""
            parts.append(f"{kind}: {len(items)} row(s) ({shown}{more})")
        return "\n  ".join(parts)


def drop_bad_rows(table: pd.DataFrame, bad: Mapping[int, tuple[str, str]], skip_bad_rows: bool, where: str,
                  report: CheckReport | None = None) -> tuple[pd.DataFrame, CheckReport]:
    """Raise a `DatasetError` describing the `bad` rows (position → (kind, detail)), or drop and count them.

    `where` names the dataset in the message. With `skip_bad_rows` the rows are dropped, the
    count is added to `report` and the problems are logged.
    """
    report = report or CheckReport()
    if not bad:
        return table, report
    found = CheckReport()
    for position in sorted(bad):
        kind, detail = bad[position]
        row = table.iloc[position]
        found.problems[kind].append((str(row["source"]), str(row["path"]), detail))
    if not skip_bad_rows:
        raise DatasetError(
            f"{len(bad)} of {len(table)} rows of {where} have problems:\n  {found.describe()}\n"
            "Fix them, or set data.skip_bad_rows = true (or --set data.skip_bad_rows=true) to skip and count them."
        )
    for kind, items in found.problems.items():
        report.problems[kind].extend(items)
    report.skipped += len(bad)
    logger.warning("skipped %d bad row(s) of %d:\n  %s", len(bad), len(table), found.describe())
    keep = [i for i in range(len(table)) if i not in bad]
    return table.iloc[keep], report


def check_files(table: pd.DataFrame, root: str | Path, skip_bad_rows: bool = False) -> tuple[pd.DataFrame, CheckReport]:
    """Check every row's file and box against the image header, and that no row repeats an earlier one.

    A repeated row (the same file and box in the same split) would count one image twice, in
    training or in the validation accuracy and its standard error; a file in two splits is
    `check_split_overlap`'s to name. Returns the table (bad rows dropped if
    `skip_bad_rows`) and a report; raises `DatasetError` listing each kind of problem with its
    count and first rows otherwise.
    """
    root = Path(root).resolve()
    first_row: dict[tuple[str, tuple | None, str], int] = {}
    bad = {}
    for position, (path, box, split) in enumerate(zip(table["path"], boxes(table), table["split"])):
        earlier = first_row.setdefault((os.path.normpath(path), box, split), position)
        if earlier != position:
            bad[position] = "duplicated row", f"the same file and box as {table['source'].iloc[earlier]}"
        elif (problem := _row_problem(Path(path), box, root)) is not None:
            bad[position] = problem
    return drop_bad_rows(table, bad, skip_bad_rows, str(root))


def check_split_overlap(table: pd.DataFrame, digests: Sequence[str], skip_bad_rows: bool, where: str,
                        report: CheckReport) -> tuple[pd.DataFrame, CheckReport]:
    """Refuse (or drop from training) rows whose image is also a test image: the same file, or the
    same bytes under another name. `digests` are the rows' content hashes (from the store)."""
    test_rows = {digest: source for digest, split, source in zip(digests, table["split"], table["source"]) if split == "test"}
    bad = {position: ("image also in the test split", f"the same image as test row {test_rows[digest]}")
           for position, (digest, split) in enumerate(zip(digests, table["split"])) if split != "test" and digest in test_rows}
    return drop_bad_rows(table, bad, skip_bad_rows, where, report)


def _row_problem(path: Path, box: tuple[int, int, int, int] | None, root: Path) -> tuple[str, str] | None:
    if not path.resolve().is_relative_to(root):
        return "file name points outside the dataset root", f"not under {root}"
    if not path.is_file():
        return "missing image file", ""
    if path.stat().st_size == 0:
        return "empty image file", "0 bytes"
    try:
        width, height = oriented_size(path)
    except ImageError as error:
        return "unreadable image", str(error).removeprefix(f"{path}: ")
    return region_problem(box, width, height)
