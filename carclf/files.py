"""Atomic writes: every artifact is written to a temporary name and renamed into place.

A run killed mid-write then leaves the previous file (or none), never a truncated one. The
temporary name says which host and process write it (`.partial-<host>-<pid>-<name>`), so what a
killed process left is recognised and removed by the next build in that folder
(`remove_abandoned_partials`), never read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def partial_path(path: str | Path) -> Path:
    """The temporary name this process writes `path` under, beside it."""
    path = Path(path)
    return path.with_name(f".partial-{socket.gethostname()}-{os.getpid()}-{path.name}")


def remove_abandoned_partials(folder: str | Path) -> None:
    """Remove the partial files and folders in `folder` that a process of this host, now gone, left.

    A build killed outright (kill -9, a lost machine) cannot clean up after itself; its partial
    output is never read, and this removes it. Other hosts' partials (a shared cache) are left alone.
    """
    pattern = re.compile(rf"\.partial-{re.escape(socket.gethostname())}-(\d+)-")
    folder = Path(folder)
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(entry.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def absolute_path(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute against the working folder (not following links).

    Every path a user gives (an experiment key, a flag, an environment variable) goes through here
    once, in the process that read it: a trial runs in a Ray worker whose working folder is elsewhere."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def cache_home() -> Path:
    """carclf's folder in the user's cache (`$XDG_CACHE_HOME/carclf`, else `~/.cache/carclf`), absolute."""
    return absolute_path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "carclf"


def keras_home() -> Path:
    """Keras' folder (`$KERAS_HOME`, else `~/.keras`), absolute: `keras.json` and downloaded weights live there."""
    return absolute_path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def cache_root(cache_dir: str) -> Path:
    """The cache carclf uses: `data.cache_dir` when it is set (a shared disk on a cluster), else `cache_home()`; absolute."""
    return absolute_path(cache_dir) if cache_dir else cache_home()


def cache_folder(cache_dir: str, kind: str) -> Path:
    """Where cached `kind` files live ("decoded", "features", "backbones", "probes", "compilation")."""
    return cache_root(cache_dir) / kind


def require_free_space(folder: str | Path, needed_bytes: int, purpose: str) -> None:
    """Raise `OSError(ENOSPC)` naming `folder` when its disk has less than `needed_bytes` free.

    Checked before large writes: a memory-mapped file on a full disk would crash the process
    (SIGBUS) instead of failing with a message.
    """
    folder = Path(folder)
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OSError(errno.ENOSPC, f"No space left: {free / 2**20:,.0f} MB free, {purpose} needs about "
                                    f"{needed_bytes / 2**20:,.0f} MB", str(folder))


def plain_value(value: Any) -> Any:
    """NumPy and pandas scalars as plain Python values (NaN as None), ready for dataclasses and JSON."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented, strict JSON, atomically.

    Non-finite floats (a diverged trial's -inf score, a NaN) are written as null: Python would
    write `-Infinity` and `NaN`, which are not JSON, and JavaScript's `JSON.parse` refuses them.
    """
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(finite(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    return Path(path)


def finite(data: Any) -> Any:
    """`data` (dicts, lists, tuples, scalars) with every non-finite float replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | Path, text: str) -> Path:
    """Write `text`, atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)
