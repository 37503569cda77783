"""A run folder: every file a search writes, its lock and the stage it reached, in one object.

    RUN_DIR/
      experiment.json    the resolved experiment the trials ran with (and what was asked for, under "requested")
      dataset.parquet    the indexed dataset and its splits
      transfer.json      the transfer probe's result
      study.db           the Optuna study, written from the searcher's saved state once the trials stop (tuning.search_state)
      rungs.jsonl        ASHA's decisions (tuning.scheduler), written likewise
      ray/               Ray Tune's experiment: its saved state, the searcher's (searcher-state-*.pkl, JSON:
                         tuning.search_state) and each trial's folder (results, checkpoints, TensorBoard files)
      trials.parquet     every reported epoch of every trial (tuning.trials)
      search.json        the search's timing, sampler and validation size
      best/              the delivered model (carclf.model_folder, tuning.deliver), metrics.json, test_predictions.parquet
                         (and test_predictions.txt for an unlabeled test split)
      report.html, report.json
      status.json        the stage reached: started, searched, finished
      .lock              held by the search that owns the folder
      .progress.json     progress of the work done before the trials (tuning.driver_tasks)

Every file is read through `read_run_file`, which turns damage into one `RunFolderError` naming the
file and what to do. `experiment.json` records the run's `run_id`, made when the run started; the
study and every line of `rungs.jsonl` carry it too, so `--resume` can tell a file of this run from
another run's copy (`tuning.resume.check_resumable`).

Ray's files have a folder of their own because Ray, restoring an experiment, copies every `.json`
file beside its saved state into a folder of its own and writes them back at each snapshot: beside
carclf's files it rewrote experiment.json after every `--resume` (seen with Ray 2.60), and a kill
during such a copy left the file empty.

`hold` takes an exclusive lock on `.lock` for the life of the search (the operating system drops it
when the process ends, even on SIGKILL), so a second search on a run in progress is refused with the
first one's process, host and start time. `status.json` records the stage reached, so `--resume` of
a finished run changes nothing, and a resume that lacks a file its stage wrote, or finds
`status.json` damaged, says which file and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from carclf.data.table import load_index, save_index
from carclf.files import atomic_path, read_json, remove_abandoned_partials, write_json

STAGES = ("started", "searched", "finished")  # finished: retrained, evaluated and reported
DECISIONS = ("continued", "spared", "stopped")  # what ASHA did with a trial at a rung (tuning.scheduler)
RESTORE = "restore it from a copy of the run folder, or start a new run with another --name"
RAY_FOLDER = "ray"  # Ray Tune's experiment folder in a run (its `name` under the run as `storage_path`)


class RunInUseError(RuntimeError):
    """Another search holds this run folder."""


class RunFolderError(RuntimeError):
    """A run folder lacks a file its stage wrote, or holds a damaged one."""


def read_run_file(path: Path, reader: Callable[[Path], Any]) -> Any:
    """`reader(path)`, or one `RunFolderError` naming the file, what is wrong and what to do."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing; {RESTORE}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:  # pyarrow's and JSON's errors are ValueErrors
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise RunFolderError(f"{path}: damaged ({reason}); {RESTORE}") from None


@dataclass(frozen=True)
class SavedExperiment:
    """experiment.json: the experiment as the trials ran it, the values it was resolved from, and the run's id
    (None for a run started before runs had one)."""

    document: dict[str, Any]
    requested: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def parse_rung_decisions(text: str, path: Path) -> list[dict[str, Any]]:
    """The lines of `rungs.jsonl`, each checked to be a rung decision; a line that is not names its number."""
    decisions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            decision = json.loads(line)
            well_formed = (isinstance(decision, dict) and isinstance(decision.get("trial_id"), str)
                           and isinstance(decision.get("rung"), int) and decision.get("decision") in DECISIONS
                           and isinstance(decision.get("score"), (int, float)))
        except ValueError:
            well_formed = False
        if not well_formed:
            raise ValueError(f"line {number} is not one of ASHA's rung decisions: {line[:80]!r}")
        decisions.append(decision)
    return decisions


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
    def ray_dir(self) -> Path:
        return self.path / RAY_FOLDER

    @property
    def progress_file(self) -> Path:
        return self.path / ".progress.json"

    def own_files(self) -> tuple[Path, ...]:
        """The files carclf writes into the run (Ray's folder aside)."""
        return (self.experiment_file, self.dataset_file, self.transfer_file, self.study_file, self.rungs_file, self.trials_file,
                self.search_file, self.best, self.report_html, self.report_json, self.status_file)

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
            remove_abandoned_partials(self.path)  # what an earlier owner, killed mid-write, left half-written
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
            raise RunFolderError(f"{path}: damaged ({error}); it says how far the run got: {RESTORE}") from None
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

    def write_experiment(self, experiment: dict[str, Any], requested: dict[str, Any], run_id: str) -> None:
        """The resolved experiment the trials run with, under "requested" the values it was resolved from, and the run's id."""
        write_json(self.experiment_file, {"run_id": run_id, **experiment, "requested": requested})

    def read_experiment(self) -> SavedExperiment:
        """experiment.json as saved (see `SavedExperiment`)."""
        document = read_run_file(self.experiment_file, read_json)
        if not isinstance(document, dict):
            raise RunFolderError(f"{self.experiment_file}: damaged (not a JSON object); {RESTORE}")
        return SavedExperiment(document, document.pop("requested", {}), document.pop("run_id", None))

    def read_dataset(self) -> pd.DataFrame:
        return read_run_file(self.dataset_file, load_index)

    def write_trials(self, trials: pd.DataFrame) -> None:
        with atomic_path(self.trials_file) as partial:
            trials.to_parquet(partial, index=False)

    def read_trials(self) -> pd.DataFrame:
        return read_run_file(self.trials_file, pd.read_parquet)

    def read_rung_decisions(self) -> list[dict[str, Any]]:
        """ASHA's decisions (`tuning.scheduler`), oldest first; none for a search without early stopping."""
        if not self.rungs_file.is_file():
            return []
        return read_run_file(self.rungs_file, lambda path: parse_rung_decisions(path.read_text(), path))
