"""Files carclf writes: strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from carclf.files import write_json


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
