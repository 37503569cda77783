"""What a search must not lose, as plain data Ray saves and restores: the study's trials and ASHA's rung decisions.

Ray Tune saves a searcher's state (`Searcher.save`, into the run's `ray/searcher-state-*.pkl`) with
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
newest saved state from Ray's folder in the run (`read_search_state`) and writes the study, for
optuna-dashboard (`study.db`, or `search.storage`: `tuning.study_storage`), and `rungs.jsonl`, the
log the report reads (`export_search_state`).

The file is JSON (Ray names it `.pkl`); infinite scores (a diverged trial's) are written as the
strings "inf" and "-inf", so it stays strict JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from carclf.files import write_text
from tuning.run_folder import RunFolder, read_run_file
from tuning.study_storage import StudyPlace, write_study

STATE_VERSION = 1
RAY_TRIAL_ATTRIBUTE = "ray_trial_id"


def experiment_fingerprint(document: dict[str, Any]) -> str:
    """What makes trials of two runs comparable: the data, model, train, search and scheduler tables (where the
    study is written, `search.storage`, and what the sampler is told of stopped trials, `search.stopped_trials`, aside:
    neither changes what a trial measures)."""
    kept = {key: document[key] for key in ("data", "model", "train", "search", "scheduler")}
    kept["search"] = {key: value for key, value in kept["search"].items() if key not in ("storage", "stopped_trials")}
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


def newest_state_file(ray_dir: Path) -> Path | None:
    """The newest searcher state Ray saved in its experiment folder (`RunFolder.ray_dir`; its file names sort by the
    session's start time)."""
    files = sorted(Path(ray_dir).glob(Searcher.CKPT_FILE_TMPL.format("*")))
    return files[-1] if files else None


def read_search_state(ray_dir: Path) -> dict[str, Any] | None:
    """The newest saved search state in Ray's experiment folder, checked to be carclf's; None when the search saved none."""
    path = newest_state_file(ray_dir)
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


def export_search_state(place: StudyPlace, state: dict[str, Any], distributions: dict[str, Any]) -> str:
    """Write the study (for optuna-dashboard: `place`, the run folder's study.db or `search.storage`) and `rungs.jsonl`
    (ASHA's log) from a saved search state; returns the study's name."""
    identity = {key: state["identity"][key] for key in ("fingerprint", "source", "run_id")}
    trials = [frozen_trial(saved, distributions) for saved in state["trials"]]  # an interrupted one as RUNNING
    name = write_study(place, identity, state["identity"]["direction"], trials)
    write_text(RunFolder(place.run_dir).rungs_file, "".join(json.dumps(decision) + "\n" for decision in state["rungs"]))
    return name
