"""Atomic writes: every artifact is written to a temporary name and renamed into place.

A run killed mid-write then leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def cache_home() -> Path:
    """carclf's folder in the user's cache (`$XDG_CACHE_HOME/carclf`, else `~/.cache/carclf`)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "carclf"


def cache_folder(cache_dir: str, kind: str) -> Path:
    """Where cached `kind` files live ("decoded", "features", "backbones"): under `data.cache_dir`
    when it is set (a shared disk on a cluster), else under `cache_home()`."""
    return (Path(cache_dir).expanduser() if cache_dir else cache_home()) / kind


def plain_value(value: Any) -> Any:
    """NumPy and pandas scalars as plain Python values (NaN as None), ready for dataclasses and JSON."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | Path, text: str) -> Path:
    """Write `text`, atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)
