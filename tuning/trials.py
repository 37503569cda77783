"""Every trial's reported epochs as one table, and the one rule that ranks trials.

The rule: a trial's score is its best epoch's value of the search metric, and that epoch is the
one the winner is retrained for. Trials report both every epoch (`best_<metric>`, `best_epoch`,
see `carclf.trainable`), the same values Optuna learns from and ASHA compares, so ranking reads
them from the trial's last report. A diverged trial scores the worst possible value.

Accuracy on a validation set of n images has a standard error of sqrt(p (1 - p) / n);
`within_noise` says which top trials the best one does not clearly beat.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carclf.files import plain_value
from carclf.trainable import Selection

STATUSES = ("finished", "stopped early", "diverged", "failed")
NOISE_Z = 1.96  # a difference under 1.96 combined standard errors is within noise (95 %)


def trials_table(results, max_epochs: int) -> pd.DataFrame:
    """Every reported row of every trial, with the trial's config and status (one of `STATUSES`)."""
    frames = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:  # failed before its first report: keep one row, so it is counted
            frame = pd.DataFrame({"epoch": pd.array([pd.NA], dtype="Int64")})
        frame = frame[[c for c in frame.columns if not c.startswith("config/")]].copy()
        last = frame.iloc[-1]
        last_epoch = int(last["epoch"]) if pd.notna(last["epoch"]) else 0
        if result.error:
            status = "failed"
        elif bool(last.get("diverged", False)):
            status = "diverged"
        else:
            status = "finished" if last_epoch >= max_epochs else "stopped early"
        frame["trial_id"] = result.metrics.get("trial_id") if result.metrics else Path(result.path).name
        frame["trial_path"] = result.path
        frame["status"] = status
        frame["error"] = str(result.error).splitlines()[0][:300] if result.error else None
        for key, value in (result.config or {}).items():  # None for a trial interrupted before it started
            frame[f"config/{key}"] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trial_summaries(trials: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """One row per trial, best first: its score, best epoch, epochs trained, status and settings."""
    if trials.empty or selection.objective not in trials:
        return pd.DataFrame(columns=["score", "best_epoch", "epochs", "status"])
    config = [c for c in trials.columns if c.startswith("config/")]
    last = trials.sort_values("epoch").groupby("trial_id", sort=False).last()
    rows = pd.DataFrame({
        "score": pd.to_numeric(last[selection.objective], errors="coerce"),
        "best_epoch": pd.to_numeric(last.get("best_epoch"), errors="coerce").astype("Int64"),
        "epochs": pd.to_numeric(last["epoch"], errors="coerce").astype("Int64"),
        "status": last["status"],
        "precision": last["precision"] if "precision" in last else None,
        **{c.removeprefix("config/"): last[c] for c in config},
    })
    rows.loc[rows["status"] == "diverged", "score"] = selection.worst
    ordered = rows.assign(missing=rows["score"].isna()).sort_values(["missing", "score"], ascending=[True, selection.mode == "min"])
    return ordered.drop(columns="missing")


def top_trials(trials: pd.DataFrame, selection: Selection, count: int = 10, validation_size: int | None = None) -> list[dict[str, Any]]:
    """The best `count` trials as plain dicts (with `standard_error` for accuracy metrics)."""
    rows = trial_summaries(trials, selection).head(count).rename(columns={"score": selection.metric})
    out = [{"trial_id": trial_id, **{k: plain_value(v) for k, v in row.items()}} for trial_id, row in rows.iterrows()]
    for row in out:
        row["standard_error"] = standard_error(row[selection.metric], selection.metric, validation_size)
    return out


def standard_error(value: float | None, metric: str, validation_size: int | None) -> float | None:
    """The binomial standard error of an accuracy on `validation_size` images (None for losses)."""
    if value is None or not validation_size or "accuracy" not in metric or not math.isfinite(value):
        return None
    return math.sqrt(max(value * (1 - value), 0.0) / validation_size)


def within_noise(top: list[dict[str, Any]], metric: str) -> list[str]:
    """Trial ids among `top` whose score differs from the best's by less than `NOISE_Z` combined standard errors."""
    if len(top) < 2 or top[0].get("standard_error") is None:
        return []
    best = top[0]
    close = []
    for other in top[1:]:
        if other.get("standard_error") is None:
            continue
        spread = NOISE_Z * math.hypot(best["standard_error"], other["standard_error"])
        if abs(best[metric] - other[metric]) < spread:
            close.append(other["trial_id"])
    return close


def best_trial(trials: pd.DataFrame, selection: Selection, space_keys: list[str]) -> tuple[dict[str, Any], int] | None:
    """The winner's hyperparameters and the epochs to retrain it for (its best epoch); None if no trial scored."""
    rows = trial_summaries(trials, selection)
    scored = rows[rows["score"].notna() & np.isfinite(rows["score"].astype(float))]
    if scored.empty:
        return None
    best = scored.iloc[0]
    return {key: plain_value(best[key]) for key in space_keys}, int(best["best_epoch"])
