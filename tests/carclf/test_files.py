"""Files carclf writes: strict JSON; partial files and folders of killed processes removed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from carclf.files import partial_path, remove_abandoned_partials, write_json


def _strict(text: str):
    """`json.loads` as a JavaScript `JSON.parse` reads: NaN and Infinity are errors."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    data = {"val_accuracy": -math.inf, "loss": math.nan, "trials": [{"score": math.inf}, (1.5, np.float64("nan"))], "ok": 0.25}
    text = write_json(tmp_path / "report.json", data).read_text()
    assert _strict(text) == {"val_accuracy": None, "loss": None, "trials": [{"score": None}, [1.5, None]], "ok": 0.25}
    with pytest.raises(ValueError, match="-Infinity is not JSON"):
        _strict(json.dumps({"val_accuracy": -math.inf}))  # what Python writes by itself


def test_partials_of_a_process_that_is_gone_are_removed_and_live_ones_kept(tmp_path):
    """What a killed feature build leaves (a partial folder) goes; a build still running keeps its own."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    mine = partial_path(tmp_path / "features-key")
    theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{gone.stdout.strip()}-"))
    for folder in (mine, theirs):
        (folder / "train.npy").parent.mkdir()
        (folder / "train.npy").write_bytes(b"half")
    (tmp_path / "kept.npy").write_bytes(b"not a partial")
    remove_abandoned_partials(tmp_path)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted([mine.name, "kept.npy"])
