"""The driver's side of `carclf.progress`: wait for a Ray task, printing how far it is and the time left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from carclf.files import read_json

POLL_SECONDS = 5.0


def describe_progress(state: dict[str, Any]) -> str:
    """`pretraining ...: 2/6, 41 s so far, about 82 s left` (no estimate before the first step)."""
    done, total, elapsed = state["done"], state["total"], state["elapsed_s"]
    left = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
    return f"{state['what']}: {done}/{total}, {elapsed:.0f} s so far{left}"


def wait_with_progress(ref: ray.ObjectRef, progress: Path, poll_seconds: float = POLL_SECONDS) -> Any:
    """`ray.get(ref)`, printing each new state the task writes to `progress` (removed once it is done)."""
    progress.unlink(missing_ok=True)
    shown = None
    try:
        while not ray.wait([ref], timeout=poll_seconds)[0]:
            try:
                state = read_json(progress)
            except (OSError, ValueError):  # not written yet
                continue
            if state != shown:
                print(describe_progress(state), flush=True)
                shown = state
        return ray.get(ref)
    finally:
        progress.unlink(missing_ok=True)
