"""Every trial's reported epochs as one table, and the one rule that ranks trials.

The rule: a trial's score is its best epoch's value of the search metric, and that epoch is the
one the winner is retrained for. Trials report both every epoch (`best_<metric>`, `best_epoch`,
see `tuning.trainable`), the same values Optuna learns from and ASHA compares, so ranking reads
them from the trial's last report. A diverged trial scores the worst possible value. Ties are
broken by a stated rule, through stable sorts: fewer images trained to reach the score (the
earlier best epoch; every epoch holds the same images), then the earlier trial (Ray's trial
number), so the same table in any row order chooses the same winner.

Accuracy on a validation set of n images has a standard error of sqrt(p (1 - p) / n);
`within_noise` says which top trials the best one does not clearly beat.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carclf.evaluate import NOISE_Z, accuracy_standard_error
from carclf.files import plain_value


@dataclass(frozen=True)
class Selection:
    """The search metric and direction; `objective` is the name trials report their best value under."""

    metric: str = "val_accuracy"
    mode: str = "max"

    @classmethod
    def of(cls, search) -> Selection:
        """The rule of an experiment's `[search]` (`tuning.experiment.SearchConfig`)."""
        return cls(search.metric, search.direction)

    @property
    def objective(self) -> str:
        return f"best_{self.metric}"

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)


# "stopped early": stopped by ASHA at a rung; "interrupted": cut short otherwise (a time budget, a
# lost worker); "never started": no epoch reported.
STATUSES = ("finished", "stopped early", "diverged", "failed", "interrupted", "never started")


def trials_table(results, max_epochs: int, stopped_early: set[str] = frozenset()) -> pd.DataFrame:
    """Every epoch of every trial, once, with the trial's config and status (one of `STATUSES`).

    A trial that a resumed search restarts from an earlier checkpoint, or from its start (checkpoints are rare,
    `tuning.trainable`), reports the epochs after it again, and Ray's results keep both reports: the later one is what
    the trial went on from, so it is kept. The abandoned epochs' time is not counted as training (`useful_fraction`).
    `stopped_early` holds the ids of the trials ASHA stopped (`tuning.scheduler.read_rung_decisions`).
    """
    frames = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:  # failed before its first report: keep one row, so it is counted
            frame = pd.DataFrame({"epoch": pd.array([pd.NA], dtype="Int64")})
        frame = frame[[c for c in frame.columns if not c.startswith("config/")]].drop_duplicates("epoch", keep="last")
        last = frame.iloc[-1]
        last_epoch = int(last["epoch"]) if pd.notna(last["epoch"]) else 0
        trial_id = result.metrics.get("trial_id") if result.metrics else Path(result.path).name
        if result.error:
            status = "failed"
        elif last_epoch == 0:
            status = "never started"
        elif bool(last.get("diverged", False)):
            status = "diverged"
        elif last_epoch >= max_epochs:
            status = "finished"
        else:
            status = "stopped early" if trial_id in stopped_early else "interrupted"
        frame["trial_id"] = trial_id
        frame["trial_path"] = result.path
        frame["status"] = status
        frame["error"] = str(result.error).splitlines()[0][:300] if result.error else None
        for key, value in (result.config or {}).items():  # None for a trial interrupted before it started
            frame[f"config/{key}"] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trial_number(trial_id: str, trial_path: str) -> float:
    """Ray's creation number of a trial, from its folder (`CarClassifierTrainable_<id>_3_batch_size=...` → 3); NaN without one."""
    found = re.search(rf"_{re.escape(str(trial_id))}_(\d+)(_|$)", Path(str(trial_path)).name)
    return float(found.group(1)) if found else math.nan


def trial_summaries(trials: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """One row per trial, best first: its score, best epoch, epochs trained, status and settings."""
    if trials.empty or selection.objective not in trials:
        return pd.DataFrame(columns=[selection.objective, "best_epoch", "epochs", "status"])
    config = [c for c in trials.columns if c.startswith("config/")]
    last = trials.sort_values("epoch", kind="stable").groupby("trial_id", sort=False).last()
    rows = pd.DataFrame({
        selection.objective: pd.to_numeric(last[selection.objective], errors="coerce"),
        "best_epoch": pd.to_numeric(last.get("best_epoch"), errors="coerce").astype("Int64"),
        "epochs": pd.to_numeric(last["epoch"], errors="coerce").astype("Int64"),
        "status": last["status"],
        "trial_number": [trial_number(t, p) for t, p in zip(last.index, last["trial_path"])] if "trial_path" in last else math.nan,
        "precision": last["precision"] if "precision" in last else None,
        **{c.removeprefix("config/"): last[c] for c in config},
    })
    rows.loc[rows["status"] == "diverged", selection.objective] = selection.worst
    keys = rows.assign(missing=rows[selection.objective].isna(), name=rows.index.astype(str))
    ordered = keys.sort_values(["missing", selection.objective, "best_epoch", "trial_number", "name"],
                               ascending=[True, selection.mode == "min", True, True, True], kind="stable", na_position="last")
    return ordered.drop(columns=["missing", "name"])


def top_trials(trials: pd.DataFrame, selection: Selection, count: int = 10, validation_size: int | None = None) -> list[dict[str, Any]]:
    """The best `count` trials as plain dicts (with `standard_error` for accuracy metrics)."""
    rows = trial_summaries(trials, selection).head(count)
    out = [{"trial_id": trial_id, **{k: plain_value(v) for k, v in row.items()}} for trial_id, row in rows.iterrows()]
    for row in out:
        row["standard_error"] = standard_error(row[selection.objective], selection.metric, validation_size)
    return out


def has_standard_error(metric: str) -> bool:
    """Whether `metric` has a binomial standard error (an accuracy does; a loss does not)."""
    return "accuracy" in metric


def standard_error(value: float | None, metric: str, validation_size: int | None) -> float | None:
    """The binomial standard error of an accuracy on `validation_size` images (None for losses)."""
    if value is None or not validation_size or not has_standard_error(metric) or not math.isfinite(value):
        return None
    return accuracy_standard_error(value, validation_size)


def within_noise(top: list[dict[str, Any]], objective: str) -> list[str]:
    """Trial ids among `top` whose score differs from the best's by less than `NOISE_Z` combined standard errors."""
    if len(top) < 2 or top[0].get("standard_error") is None:
        return []
    best = top[0]
    close = []
    for other in top[1:]:
        if other.get("standard_error") is None:
            continue
        spread = NOISE_Z * math.hypot(best["standard_error"], other["standard_error"])
        if abs(best[objective] - other[objective]) < spread:
            close.append(other["trial_id"])
    return close


def start_trial_id(summaries: pd.DataFrame, start: list[dict]) -> str | None:
    """The trial of the first `[[search.start]]` point (`trial_summaries` rows), or None."""
    if not start:
        return None
    matches = [trial_id for trial_id, row in summaries.iterrows() if all(plain_value(row.get(key)) == value for key, value in start[0].items())]
    return matches[0] if matches else None


def against_start(trials: pd.DataFrame, start: list[dict], selection: Selection, validation_size: int) -> dict[str, Any] | None:
    """The best trial against the starting configuration (the first `[[search.start]]` trial), in numbers and plain words."""
    summaries = trial_summaries(trials, selection)
    scored = summaries[summaries[selection.objective].notna()]
    if not start or scored.empty:
        return None
    start_id = start_trial_id(summaries, start)
    if start_id is None or pd.isna(summaries.loc[start_id, selection.objective]):
        return None
    start_score = float(summaries.loc[start_id, selection.objective])
    best_id, best_score = scored.index[0], float(scored[selection.objective].iloc[0])
    gain = (best_score - start_score) * (1 if selection.mode == "max" else -1)
    errors = [standard_error(v, selection.metric, validation_size) for v in (best_score, start_score)]
    error = None if None in errors else float(np.hypot(*errors))
    noisy = error is not None and gain < NOISE_Z * error
    if best_id == start_id:
        statement = "The starting configuration is the best trial: tuning found nothing better."
    elif error is None:
        statement = f"The best trial improves {selection.metric} over the starting configuration by {gain:.4g} (no standard error for a loss)."
    elif noisy:
        statement = (f"Tuning found nothing better than the starting configuration within noise: the best trial's {selection.metric} "
                     f"is {gain:+.3f} ± {error:.3f} from the start's, under {NOISE_Z} standard errors.")
    else:
        statement = f"The best trial beats the starting configuration by {gain:+.3f} ± {error:.3f} {selection.metric}, clear of noise."
    return {"trial_id": best_id, "start_trial_id": start_id, "gain": gain, "standard_error": error,
            "within_noise": bool(noisy or best_id == start_id), "statement": statement}


@dataclass(frozen=True)
class DeliveredTrial:
    """A trial whose model a run delivers (the winner, or the start beside it): its hyperparameters, its best epoch (the
    epochs its model is delivered at) and its score."""

    trial_id: str
    hyperparameters: dict[str, Any]
    best_epoch: int
    score: float
    folder_name: str  # the trial's folder in Ray's (`RunFolder.ray_dir`), which holds its checkpoints

    def summary(self, metric: str) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "metric": metric, "score": self.score, "best_epoch": self.best_epoch}


def best_trial(trials: pd.DataFrame, selection: Selection, space_keys: list[str]) -> DeliveredTrial | None:
    """The winner (`DeliveredTrial`); None if no trial scored."""
    rows = trial_summaries(trials, selection)
    scored = rows[rows[selection.objective].notna() & np.isfinite(rows[selection.objective].astype(float))]
    return None if scored.empty else delivered_trial(trials, scored, scored.index[0], space_keys, selection)


def start_trial(trials: pd.DataFrame, start: list[dict], selection: Selection, space_keys: list[str]) -> DeliveredTrial | None:
    """The first `[[search.start]]` point's trial, in the winner's terms, to deliver the same way; None if it did not score."""
    rows = trial_summaries(trials, selection)
    trial_id = start_trial_id(rows, start)
    if trial_id is None or not np.isfinite(float(rows.loc[trial_id, selection.objective])):
        return None
    return delivered_trial(trials, rows, trial_id, space_keys, selection)


def delivered_trial(trials: pd.DataFrame, summaries: pd.DataFrame, trial_id: str, space_keys: list[str], selection: Selection) -> DeliveredTrial:
    row = summaries.loc[trial_id]
    paths = trials.loc[trials["trial_id"] == trial_id, "trial_path"] if "trial_path" in trials else pd.Series(dtype=str)
    return DeliveredTrial(trial_id=str(trial_id), hyperparameters={key: plain_value(row[key]) for key in space_keys},
                  best_epoch=int(row["best_epoch"]), score=float(row[selection.objective]),
                  folder_name=Path(str(paths.iloc[0])).name if len(paths) else "")


def useful_fraction(trials: pd.DataFrame, trials_seconds: float, slots: int) -> float | None:
    """The share of the trials phase spent in training steps: each trial's epochs' `train_seconds`, less
    its `compile_seconds`, summed over trials, divided by the phase's wall time times the trials that
    could run at once. The rest went to starting workers, building models, compiling, validating and
    checkpointing (`tuning.trainable`). None when no trial reported its timing."""
    if trials.empty or "train_seconds" not in trials or trials_seconds <= 0 or slots < 1:
        return None
    training = 0.0
    for _, rows in trials.groupby("trial_id", sort=False):
        seconds = rows["train_seconds"].dropna()
        compiling = rows["compile_seconds"].dropna() if "compile_seconds" in rows else pd.Series(dtype=float)
        training += max(0.0, float(seconds.sum()) - (float(compiling.iloc[-1]) if len(compiling) else 0.0))
    return training / (trials_seconds * slots)
