"""The search CLI as the tests call it: `python -m tuning.search` on the tiny dataset, with a timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

START_POINT = "{ batch_size = 8, learning_rate = 0.005, lr_decay = 0.0001, unfreeze_depth = 0, head_epochs = 0 }"


def search_command(tiny_cars: Path, storage: Path, name: str, *extra: str, weights: str = "none",
                   cache: Path | None = None) -> list[str]:
    """`python -m tuning.search` on the tiny dataset: 32 px, a few 3-epoch trials, a 2-CPU local cluster."""
    return [
        sys.executable, "-m", "tuning.search", "--num-cpus", "2", "--storage-path", str(storage), "--name", name,
        "--data-dir", str(tiny_cars), "--set", "data.format='devkit'", "--set", "data.validation_fraction=0.25",
        "--set", f"data.cache_dir='{cache or storage / 'cache'}'", "--set", f"model.weights='{weights}'",
        "--set", "scheduler.max_epochs=3", "--set", "scheduler.reduction_factor=2",
        "--set", "search.metric='val_loss'",
        "--set", "search.space.batch_size={ choice = [8, 16] }",
        "--set", "search.space.unfreeze_depth={ randint = [0, 3] }",
        "--set", f"search.start=[{START_POINT}]", *extra,
    ]


def run(command: list[str], timeout: int = 420, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
