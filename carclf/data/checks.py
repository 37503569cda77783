"""Checks of a dataset table against the files on disk, with errors a user can act on.

Every problem names the row and the file. By default any problem stops the run; with
`skip_bad_rows` the bad rows are dropped and counted instead: nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from carclf.data.table import BBOX_COLUMNS, DatasetError

logger = logging.getLogger(__name__)
SHOWN_PER_PROBLEM = 3


@dataclass
class CheckReport:
    """What the checks found: problem kind → [(row, path, detail)], and how many rows were skipped."""

    problems: dict[str, list[tuple[object, str, str]]] = field(default_factory=lambda: defaultdict(list))
    skipped: int = 0

    def describe(self) -> str:
        parts = []
        for kind, items in self.problems.items():
            shown = "; ".join(f"row {row} {path}{': ' + detail if detail else ''}" for row, path, detail in items[:SHOWN_PER_PROBLEM])
            more = f"; and {len(items) - SHOWN_PER_PROBLEM} more" if len(items) > SHOWN_PER_PROBLEM else ""
            parts.append(f"{kind}: {len(items)} row(s) ({shown}{more})")
        return "\n  ".join(parts)


def check_index(index: pd.DataFrame, root: str | Path, skip_bad_rows: bool = False) -> tuple[pd.DataFrame, CheckReport]:
    """Check every row's file and box; return the table (bad rows dropped if asked) and a report.

    Raises `DatasetError` listing each kind of problem with its count and first few rows, unless
    `skip_bad_rows`, in which case the rows are dropped and the count is logged and reported.
    """
    root = Path(root).resolve()
    report = CheckReport()
    bad_rows = set()
    for position, row in enumerate(index.itertuples(index=True)):
        problem = _row_problem(row, root)
        if problem is not None:
            kind, detail = problem
            report.problems[kind].append((row.Index, row.path, detail))
            bad_rows.add(position)
    if not bad_rows:
        return index, report
    if not skip_bad_rows:
        raise DatasetError(
            f"{len(bad_rows)} of {len(index)} rows under {root} have problems:\n  {report.describe()}\n"
            "Fix them, or set data.skip_bad_rows = true (or --set data.skip_bad_rows=true) to skip and count them."
        )
    report.skipped = len(bad_rows)
    logger.warning("skipped %d bad row(s) of %d:\n  %s", report.skipped, len(index), report.describe())
    keep = [i for i in range(len(index)) if i not in bad_rows]
    return index.iloc[keep], report


def _row_problem(row, root: Path) -> tuple[str, str] | None:
    path = Path(row.path)
    if not path.resolve().is_relative_to(root):
        return "file name points outside the dataset root", f"not under {root}"
    if not path.is_file():
        return "missing image file", ""
    if path.stat().st_size == 0:
        return "empty image file", "0 bytes"
    box = [getattr(row, column) for column in BBOX_COLUMNS]
    if any(pd.isna(value) for value in box):
        return None
    x1, y1, x2, y2 = (int(value) for value in box)
    if x2 <= x1 or y2 <= y1:
        return "empty bounding box", f"({x1}, {y1}, {x2}, {y2})"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        return "unreadable image", str(error)
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return "bounding box outside the image", f"({x1}, {y1}, {x2}, {y2}) in a {width}x{height} image"
    return None
