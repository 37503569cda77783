"""The search CLI as the tests call it: `python -m tuning.search` on the tiny dataset, with a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from carclf.object_storage import listing, read_text

START_POINT = "{ batch_size = 8, learning_rate = 0.001, lr_decay = 0.0001, unfreeze_depth = 0, head_epochs = 0 }"
# A start point that cannot learn: at this rate its head does not move in an epoch, so its first rung's score is the
# untrained head's, worse than that of any trial that learned from the same start (the same seed builds the same head).
NO_LEARNING_POINT = "{ batch_size = 8, learning_rate = 1e-07, lr_decay = 0.0001, unfreeze_depth = 0, head_epochs = 0 }"


# START_POINT's twin: another decay, which over an epoch's few steps changes nothing, so it learns as START_POINT does.
START_TWIN = START_POINT.replace("lr_decay = 0.0001", "lr_decay = 0.00001")


def must_stop_one(*earlier_points: str) -> list[str]:
    """Flags that make ASHA stop a trial on any sampler and any CPU: `NO_LEARNING_POINT` runs after `earlier_points`,
    head-only trials that learn (START_POINT and its twin), judged at the first rung in their first epoch. The synthetic
    backbone is pretrained on the CPU that runs the tests, and its features differ between CPUs: on an Intel Xeon a
    first epoch at 0.005 took the validation loss from 1.50 to 0.88, on an AMD EPYC from 1.65 up to 1.96 (the head
    overshoots there, fitting its 32 images). START_POINT takes a smaller step, 0.001, which the AMD EPYC's head
    took down to 1.48 (every rate from 1e-4 to 2e-3 went down there). With as many trials at once as there are earlier
    points, it starts only once one of them has finished, so the first rung's cut is set by trials that learned: it
    lands below the cut and, at its first epoch of several, is stopped (a loss gets no noise margin). Where a test
    finds no trial stopped, it prints the rung log: the scores tell whether this premise failed."""
    return ["--set", "search.space.learning_rate={ loguniform = [1e-07, 0.05] }",
            "--set", f"search.start=[{', '.join([*earlier_points, NO_LEARNING_POINT])}]"]


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


def run(command: list[str], timeout: int = 420, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def saved_trials(ray_experiment: str | Path, status: str | None = "TERMINATED") -> list[str]:
    """The trial folders that Ray's newest saved experiment state in `ray_experiment` (a run's `ray/`: a folder, or its URI)
    records as `status` (of any, with None): what a resume must keep.

    A trial whose last epoch is in its result.json but not yet in that state (Ray saves it a moment after the trial's
    checkpoint) is run again after a SIGKILL, as Ray documents, so the tests wait for the state."""
    states = sorted(name for name in listing(str(ray_experiment)) if name.startswith("experiment_state-"))
    try:
        trials = json.loads(read_text(f"{ray_experiment}/{states[-1]}"))["trial_data"] if states else []
    except (ValueError, KeyError, TypeError):  # being replaced right now
        return []
    return [state["relative_logdir"] for state in (json.loads(data) for data, _ in trials) if status in (None, state["status"])]


def e2e_flags() -> list[str]:
    """The shared whole search's flags beyond `search_command`'s (tests/tuning/conftest.py `finished_run`): 6 trials,
    two at once, its third start point one that cannot learn."""
    return ["--num-samples", "6", "--max-concurrent", "2", *must_stop_one(START_POINT, START_TWIN)]
