"""A run folder: every file a search writes, its lock and the stage it reached, in one object.

    RUN_DIR/
      experiment.json    the resolved experiment the trials ran with (and what was asked for, under "requested")
      dataset.parquet    the indexed dataset and its splits
      transfer.json      the transfer probe's result
      study.db           the Optuna study (tuning.searcher)
      rungs.jsonl        ASHA's decisions (tuning.scheduler)
      trials.parquet     every reported epoch of every trial (tuning.trials)
      search.json        the search's timing, sampler and validation size
      best/              the retrained model (carclf.model_folder), metrics.json, test_predictions.parquet
                         (and test_predictions.txt for an unlabeled test split)
      report.html, report.json
      status.json        the stage reached: started, searched, finished
      .lock              held by the search that owns the folder
      .progress.json     progress of the work done before the trials (tuning.driver_tasks)

`hold` takes an exclusive lock on `.lock` for the life of the search (the operating system drops it
when the process ends, even on SIGKILL), so a second search on a run in progress is refused with the
first one's process, host and start time. `status.json` records the stage reached, so `--resume` of
a finished run changes nothing, and a resume that lacks a file its stage wrote, or finds
`status.json` damaged, says which file and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from carclf.data.table import load_index, save_index
from carclf.files import atomic_path, read_json, write_json

STAGES = ("started", "searched", "finished")  # finished: retrained, evaluated and reported


class RunInUseError(RuntimeError):
    """Another search holds this run folder."""


class RunFolderError(RuntimeError):
    """A run folder lacks a file its stage wrote, or holds a damaged one."""


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def experiment_file(self) -> Path:
        return self.path / "experiment.json"

    @property
    def dataset_file(self) -> Path:
        return self.path / "dataset.parquet"

    @property
    def transfer_file(self) -> Path:
        return self.path / "transfer.json"

    @property
    def study_file(self) -> Path:
        return self.path / "study.db"

    @property
    def rungs_file(self) -> Path:
        return self.path / "rungs.jsonl"

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.parquet"

    @property
    def search_file(self) -> Path:
        return self.path / "search.json"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def metrics_file(self) -> Path:
        return self.best / "metrics.json"

    @property
    def predictions_file(self) -> Path:
        return self.best / "test_predictions.parquet"

    @property
    def server_predictions_file(self) -> Path:
        return self.best / "test_predictions.txt"  # the evaluation server's format, for an unlabeled test split

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def progress_file(self) -> Path:
        return self.path / ".progress.json"

    def stage_files(self, reached: str | None) -> tuple[Path, ...]:
        """The files a run has written once it reached `reached`, which a resume reads back."""
        started = (self.experiment_file, self.dataset_file)
        return {"started": started, "searched": (*started, self.trials_file)}.get(reached, ())

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Own the folder while the block runs, or raise `RunInUseError` naming the process that does."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise RunInUseError(f"{self.path}: in use by {owner}; wait for it to finish, or use another --name") from None
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

    def stage(self) -> str | None:
        """The last stage the run reached ("started", "searched", "finished"), None for a new folder."""
        path = self.status_file
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

    def mark(self, reached: str) -> None:
        if reached not in STAGES:
            raise ValueError(f"unknown stage {reached!r}")
        write_json(self.status_file, {"stage": reached, "time": time.time()})

    def require_files(self) -> None:
        """Raise `RunFolderError` naming each file the run's stage wrote that is no longer there."""
        reached = self.stage()
        missing = [path.name for path in self.stage_files(reached) if not path.is_file()]
        if missing:
            raise RunFolderError(f"{self.path}: missing {', '.join(missing)}, written when the run was {reached}; --resume needs "
                                 "them: restore them from a copy of the run folder, or start a new run with another --name")

    def write_start(self, index: pd.DataFrame) -> None:
        """The dataset, before Ray starts: the run has started (a start that fails before its first trial frees the name)."""
        save_index(index, self.dataset_file)
        self.mark("started")

    def write_experiment(self, experiment: dict[str, Any], requested: dict[str, Any]) -> None:
        """The resolved experiment the trials run with, and under "requested" the values it was resolved from."""
        write_json(self.experiment_file, {**experiment, "requested": requested})

    def read_experiment(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The saved experiment document as the trials ran with it, and the values it was resolved from."""
        document = read_json(self.experiment_file)
        return document, document.pop("requested", {})

    def read_dataset(self) -> pd.DataFrame:
        return load_index(self.dataset_file)

    def write_trials(self, trials: pd.DataFrame) -> None:
        with atomic_path(self.trials_file) as partial:
            trials.to_parquet(partial, index=False)

    def read_trials(self) -> pd.DataFrame:
        return pd.read_parquet(self.trials_file)
