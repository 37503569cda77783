"""A non-editable install carries what the demo needs: the experiment files ship inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_packages_and_the_experiments(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("carclf-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tuning/experiments/demo.toml", "tuning/experiments/stanford_cars.toml", "carclf/layers.py", "tuning/search.py"} <= names
