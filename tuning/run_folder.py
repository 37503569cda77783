"""A run folder has one owner and knows how far it got.

`hold` takes an exclusive lock on `RUN_DIR/.lock` for the life of the search (the operating
system drops it when the process ends, even on SIGKILL), so a second search on a run in progress
is refused with the first one's process, host and start time. `status.json` records the stage
reached, so `--resume` of a finished run changes nothing, and a resume that lacks a file its stage
wrote, or finds `status.json` damaged, says which file and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from carclf.files import read_json, write_json

LOCK_FILE = ".lock"
STATUS_FILE = "status.json"
STAGES = ("started", "searched", "finished")  # finished: retrained, evaluated and reported
# The files a run has written once it reached each stage, which a resume reads back.
STAGE_FILES = {"started": ("experiment.json", "dataset.parquet"),
               "searched": ("experiment.json", "dataset.parquet", "trials.parquet")}


class RunInUseError(RuntimeError):
    """Another search holds this run folder."""


class RunFolderError(RuntimeError):
    """A run folder lacks a file its stage wrote, or holds a damaged one."""


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Own `run_dir` while the block runs, or raise `RunInUseError` naming the process that does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunInUseError(f"{run_dir}: in use by {owner}; wait for it to finish, or use another --name") from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def stage(run_dir: Path) -> str | None:
    """The last stage the run reached ("started", "searched", "finished"), None for a new folder."""
    path = run_dir / STATUS_FILE
    if not path.is_file():
        return None
    try:
        reached = read_json(path)["stage"]
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"{path}: damaged ({error}); it says how far the run got: restore it from a copy of the "
                             "run folder, or start a new run with another --name") from None
    if reached not in STAGES:
        raise RunFolderError(f"{path}: unknown stage {reached!r} (expected one of {STAGES})")
    return reached


def require_files(run_dir: Path) -> None:
    """Raise `RunFolderError` naming each file the run's stage wrote that is no longer there."""
    reached = stage(run_dir)
    missing = [name for name in STAGE_FILES.get(reached, ()) if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"{run_dir}: missing {', '.join(missing)}, written when the run was {reached}; --resume needs "
                             "them: restore them from a copy of the run folder, or start a new run with another --name")


def mark(run_dir: Path, reached: str) -> None:
    if reached not in STAGES:
        raise ValueError(f"unknown stage {reached!r}")
    write_json(run_dir / STATUS_FILE, {"stage": reached, "time": time.time()})
