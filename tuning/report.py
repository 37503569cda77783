"""The evaluation report of a run: `report.html` (one self-contained file) and `report.json`.

`python -m tuning.report RUN_DIR` regenerates both from the run folder; the search calls the same
`write_report` at its end. Everything is read from the files the search wrote (`experiment.json`,
`dataset.parquet`, `trials.parquet`, `search.json`, `best/*`), so a report can be rebuilt later.
report.json and its schema are `tuning.report_numbers`, the figures `tuning.report_figures`, and
the page `tuning.report_html`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

from carclf.files import write_json, write_text
from carclf.object_storage import ObjectStorageError, is_uri
from tuning.report_figures import report_figures
from tuning.report_html import render_html
from tuning.report_numbers import read_run, report_numbers
from tuning.run_folder import RunFolder, RunFolderError, RunInUseError
from tuning.run_storage import RunPlace


def build_report(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's numbers (report.json) and the figures and extras only the HTML shows."""
    run = read_run(run_dir)
    numbers = report_numbers(run)
    return numbers, report_figures(run, numbers)


def write_report(run_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """Write `report.json` and `report.html` into `run_dir` (atomically); return their paths and report.json's numbers."""
    folder = RunFolder(Path(run_dir))
    numbers, extras = build_report(folder.path)
    json_path = write_json(folder.report_json, numbers)
    html_path = write_text(folder.report_html, render_html(numbers, extras))
    return json_path, html_path, numbers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.report", description="Regenerate a run's report.html and report.json.")
    parser.add_argument("run_dir", help="the run folder (e.g. runs/demo), or its URI on object storage (s3://bucket/runs/demo)")
    args = parser.parse_args(argv)
    place = RunPlace.at(args.run_dir if is_uri(args.run_dir) else Path(args.run_dir))
    try:
        with place.hold() if place.uri else contextlib.nullcontext():  # a local folder is read as it is, and not created
            place.pull(fresh=True)
            missing = [path.name for path in place.folder.stage_files("searched") if not path.is_file()]
            if missing:
                print(f"error: {place.where}: not a finished run folder (missing {', '.join(missing)})", file=sys.stderr)
                return 2
            json_path, html_path, _ = write_report(place.local)
            place.push()
    except (RunFolderError, RunInUseError, ObjectStorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {html_path.name} and {json_path.name} in {place.where}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
