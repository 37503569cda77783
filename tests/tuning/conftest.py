"""A real, shrunken search, run once through the CLI and shared by the tuning tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tuning.helpers import e2e_flags, run, search_command


@pytest.fixture(scope="session")
def finished_run(tiny_cars, synthetic_backbone, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A whole search from the synthetic pretrained backbone: 6 trials, two at once, retraining, report. Its third start
    point cannot learn, so ASHA stops at least that trial (`must_stop_one`)."""
    storage = tmp_path_factory.mktemp("runs")
    result = run(search_command(tiny_cars, storage, "e2e", *e2e_flags(), weights=str(synthetic_backbone)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return storage / "e2e", result
