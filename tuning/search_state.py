"""What a search must not lose, as plain data Ray saves and restores: the study's trials and ASHA's rung decisions.

Ray Tune saves a searcher's state (`Searcher.save`, into the run's `searcher-state-*.pkl`) with
every snapshot of its experiment, wherever the run is stored, and hands it back to
`Searcher.restore` on `Tuner.restore`. A scheduler it pickles once, when the search starts. So a
search's memory lives in its searcher's state (`tuning.searcher.StudySearcher`): every trial
Optuna asked for (its parameters, per-epoch values and state) and every rung decision of ASHA
(`tuning.scheduler`), which the scheduler appends to a `RungLog` it shares with the searcher.
Both are pickled together into Ray's `tuner.pkl`, so after a restore they share one log again,
and the searcher's restore refills it in place.

The state holds no path, so a run folder that moved restores as it was; and it is saved in the
same snapshot as Ray's trial states, so the two never disagree (no trial asked for after the last
snapshot survives a kill in one and not the other). Once the trials stop, the driver reads the
newest saved state from the run folder (`read_search_state`) and writes `study.db`, the study for
optuna-dashboard, and `rungs.jsonl`, the log the report reads (`export_search_state`).

The file is JSON (Ray names it `.pkl`); infinite scores (a diverged trial's) are written as the
strings "inf" and "-inf", so it stays strict JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from ray.tune.search import Searcher

from carclf.files import atomic_path, write_text
from tuning.run_folder import RESTORE, RunFolder, read_run_file

STATE_VERSION = 1
STUDY_NAME = "carclf"
IDENTITY_ATTRIBUTE = "carclf_experiment"  # the study's user attribute: fingerprint, source and run id
RAY_TRIAL_ATTRIBUTE = "ray_trial_id"


class StudyError(RuntimeError):
    """`study.db` cannot be read: damaged, or not carclf's."""


def experiment_fingerprint(document: dict[str, Any]) -> str:
    """What makes trials of two runs comparable: the data, model, train, search and scheduler tables."""
    kept = {key: document[key] for key in ("data", "model", "train", "search", "scheduler")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RungLog:
    """ASHA's decisions in the order they were made, and each rung's recorded scores (trial id → score)."""

    def __init__(self, decisions: list[dict[str, Any]] | None = None):
        self.decisions: list[dict[str, Any]] = []
        self.scores: dict[int, dict[str, float]] = {}
        self.load(decisions or [])

    def load(self, decisions: list[dict[str, Any]]) -> None:
        """Replace the log's contents (in place: the scheduler holding this log sees them)."""
        self.decisions, self.scores = [], {}
        for decision in decisions:
            self.append(decision)

    def append(self, decision: dict[str, Any]) -> None:
        self.decisions.append(decision)
        self.scores.setdefault(decision["rung"], {})[decision["trial_id"]] = decision["score"]

    def __len__(self) -> int:
        return len(self.decisions)


def encode_number(value: float | None) -> float | str | None:
    """A float as strict JSON holds it: infinities as "inf" / "-inf" (NaN never reaches the state)."""
    return value if value is None or math.isfinite(value) else ("inf" if value > 0 else "-inf")


def decode_number(value: float | str | None) -> float | None:
    return float(value) if isinstance(value, str) else value


def trial_state(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One asked trial as plain data."""
    return {"number": trial.number, "ray_trial_id": trial.user_attrs.get(RAY_TRIAL_ATTRIBUTE), "state": trial.state.name,
            "params": dict(trial.params), "value": encode_number(trial.value),
            "intermediate": [[step, encode_number(value)] for step, value in sorted(trial.intermediate_values.items())]}


def frozen_trial(state: dict[str, Any], distributions: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """A trial of the saved state as Optuna's `create_trial` makes one to add to a study."""
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state["state"]], value=decode_number(state["value"]),
        params=state["params"], distributions={key: distributions[key] for key in state["params"]},
        user_attrs={RAY_TRIAL_ATTRIBUTE: state["ray_trial_id"]},
        intermediate_values={int(step): decode_number(value) for step, value in state["intermediate"]})


def newest_state_file(run_dir: Path) -> Path | None:
    """The newest searcher state Ray saved in the run folder (its file names sort by the session's start time)."""
    files = sorted(Path(run_dir).glob(Searcher.CKPT_FILE_TMPL.format("*")))
    return files[-1] if files else None


def read_search_state(run_dir: Path) -> dict[str, Any] | None:
    """The newest saved search state of the run folder, checked to be carclf's; None when the search saved none."""
    path = newest_state_file(run_dir)
    if path is None:
        return None
    return read_run_file(path, lambda file: checked_state(json.loads(file.read_text())))


def checked_state(state: Any) -> dict[str, Any]:
    """`state` if it has the shape `StudySearcher.saved_state` gives, else a ValueError saying what it lacks."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"not the state of carclf's searcher (version {STATE_VERSION})")
    missing = sorted({"identity", "trials", "rungs"} - set(state))
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return state


def write_state(path: str | Path, state: dict[str, Any]) -> None:
    write_text(path, json.dumps(state, allow_nan=False) + "\n")


def export_search_state(run_dir: Path, state: dict[str, Any], distributions: dict[str, Any]) -> None:
    """Write `study.db` (the study, for optuna-dashboard) and `rungs.jsonl` (ASHA's log) from a saved search state.

    The study is written to a new file and renamed into place, so a reader never sees half of it."""
    folder = RunFolder(Path(run_dir))
    with atomic_path(folder.study_file) as partial:
        storage = optuna.storages.RDBStorage(sqlite_url(partial))
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=state["identity"]["direction"])
        study.set_user_attr(IDENTITY_ATTRIBUTE, {key: state["identity"][key] for key in ("fingerprint", "source", "run_id")})
        study.add_trials([frozen_trial(saved, distributions) for saved in state["trials"]])  # an interrupted one as RUNNING
        storage.engine.dispose()  # closed before the file is renamed: nothing writes to the partial name afterwards
    write_text(folder.rungs_file, "".join(json.dumps(decision) + "\n" for decision in state["rungs"]))


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file, its path escaped: a run named `run?x=1` is a folder, not a query."""
    return sqlalchemy.engine.URL.create("sqlite", database=str(Path(path).resolve())).render_as_string()


@contextlib.contextmanager
def readable_study(path: Path) -> Iterator[None]:
    """Turn SQLAlchemy's and Optuna's errors on a damaged study file into a `StudyError` naming the file and
    what to do (a truncated copy, a disk error, another program's file under the name)."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        reason = str(error).splitlines()[0]
        raise StudyError(f"{path}: damaged, or not an Optuna study ({reason}); {RESTORE}") from None


def study_identity(run_dir: Path) -> dict[str, Any] | None:
    """What `RUN_DIR/study.db` says it was written for (the experiment's fingerprint and source, the run's id);
    None without the file. A file that holds no carclf study is a `StudyError`."""
    path = RunFolder(Path(run_dir)).study_file
    if not path.is_file():
        return None
    with readable_study(path):
        storage = optuna.storages.RDBStorage(sqlite_url(path))
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        if STUDY_NAME not in names:
            raise StudyError(f"{path}: holds no carclf study (it has {names or 'none'}); {RESTORE}")
        return optuna.load_study(study_name=STUDY_NAME, storage=storage).user_attrs.get(IDENTITY_ATTRIBUTE, {})
