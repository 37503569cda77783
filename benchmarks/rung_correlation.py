"""Does an early rung rank trials as their final scores do? Spearman's rho from full learning curves.

    python benchmarks/rung_correlation.py [--input search_quality.json] [--out rung_correlation.json]

Reads the runs of `search_quality.py` WITHOUT early stopping (`scheduler = "none"`: every trial
trained all its epochs, so its whole learning curve is known), pools their trials per task (every
seed, sampler and budget; each trial is one configuration), and for each rung computes the
Spearman rank correlation (`scipy.stats.spearmanr`) between a trial's value at the rung and its
final score. A trial's value at a rung is its best-so-far validation accuracy there (what ASHA
compares); its final score is its best validation accuracy over all its epochs. Rungs are counted
three ways:
- epochs: total epochs, 1, 2, 3, ... (every epoch holds the same number of training images, so
  this is also the rung in images);
- final-phase epochs: epochs of the trial's final phase, after any head-only warm-up (the
  `final_phase_epochs` column where the rows have it; otherwise counted from `phase`: a trial
  with fine-tuning epochs counts those, a head-only trial counts all its epochs); a trial is at
  rung k at its first epoch with k final-phase epochs;
- seconds: cumulative `seconds_per_epoch`, rungs at 25 %, 50 % and 75 % of the median trial's
  total; a trial's value there is its best-so-far at the last epoch it had completed by then
  (trials with no epoch completed by then are left out, and counted).
Trials with no finite score (diverged, failed) are left out, and a configuration that appears in
several runs (the `[[search.start]]` trial opens every run) is counted once, from the first run. Prints a markdown table (task, rung
unit, rung, trials, rho) and writes `rung_correlation.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

TIME_FRACTIONS = (0.25, 0.5, 0.75)


def trial_curves(runs: list[dict]) -> list[dict]:
    """One curve per trial: epochs, best-so-far, final-phase epochs, cumulative seconds, final score."""
    curves, seen = [], set()
    for run in runs:
        by_trial: dict[str, list[dict]] = {}
        for row in run.get("rows", []):
            if row.get("epoch") is not None:
                by_trial.setdefault(str(row["trial_id"]), []).append(row)
        for trial_id, rows in by_trial.items():
            rows = sorted(rows, key=lambda row: row["epoch"])
            config = tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in rows[0].items() if k.startswith("config/")))
            if config and config in seen:  # the same configuration in another run (the [[search.start]] trial): counted once
                continue
            seen.add(config)
            values = np.array([np.nan if row.get("val_accuracy") is None else float(row["val_accuracy"]) for row in rows])
            if not np.isfinite(values).any():
                continue
            best_so_far = np.fmax.accumulate(np.where(np.isfinite(values), values, -np.inf))
            best_so_far = np.where(np.isfinite(best_so_far), best_so_far, np.nan)
            if rows[0].get("final_phase_epochs") is not None:
                final_phase = [int(row["final_phase_epochs"]) for row in rows]
                final_source = "final_phase_epochs"
            else:
                tuned = any(row.get("phase") == "fine_tune" for row in rows)
                count, final_phase = 0, []
                for row in rows:
                    count += 1 if (not tuned or row.get("phase") == "fine_tune") else 0
                    final_phase.append(count)
                final_source = "phase"
            seconds = np.cumsum([float(row.get("seconds_per_epoch") or 0.0) for row in rows])
            curves.append({"run": run.get("name"), "trial_id": trial_id, "epochs": [int(row["epoch"]) for row in rows],
                           "best_so_far": best_so_far.tolist(), "final_phase": final_phase, "final_source": final_source,
                           "seconds": seconds.tolist(), "final": float(np.nanmax(values))})
    return curves


def rho(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    at_rung, final = zip(*pairs)
    if len(set(at_rung)) < 2 or len(set(final)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = spearmanr(at_rung, final).statistic
    return None if value is None or not math.isfinite(value) else float(value)


def correlations(curves: list[dict]) -> list[dict]:
    rows = []
    max_epoch = max(max(c["epochs"]) for c in curves)
    for rung in range(1, max_epoch + 1):
        pairs = [(c["best_so_far"][c["epochs"].index(rung)], c["final"]) for c in curves if rung in c["epochs"]]
        pairs = [p for p in pairs if not math.isnan(p[0])]
        rows.append({"unit": "epochs", "rung": rung, "trials": len(pairs), "rho": rho(pairs)})
    max_final = max(max(c["final_phase"]) for c in curves)
    for rung in range(1, max_final + 1):
        pairs = []
        for c in curves:
            at = next((i for i, k in enumerate(c["final_phase"]) if k >= rung), None)
            if at is not None and not math.isnan(c["best_so_far"][at]):
                pairs.append((c["best_so_far"][at], c["final"]))
        rows.append({"unit": "final-phase epochs", "rung": rung, "trials": len(pairs), "rho": rho(pairs)})
    median_total = statistics.median(c["seconds"][-1] for c in curves)
    for fraction in TIME_FRACTIONS:
        limit = fraction * median_total
        pairs, missing = [], 0
        for c in curves:
            done = [i for i, s in enumerate(c["seconds"]) if s <= limit]
            if not done or math.isnan(c["best_so_far"][done[-1]]):
                missing += 1
                continue
            pairs.append((c["best_so_far"][done[-1]], c["final"]))
        rows.append({"unit": "seconds", "rung": f"{fraction:.0%} ({limit:.0f} s)", "seconds": limit, "trials": len(pairs),
                     "left_out_no_epoch_yet": missing, "rho": rho(pairs)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="search_quality.json")
    parser.add_argument("--out", default="rung_correlation.json")
    args = parser.parse_args()
    runs = [run for run in json.loads(Path(args.input).read_text())["runs"]
            if run.get("scheduler", "none" if run.get("strategy") in ("random", "tpe") else "asha") == "none"]
    result = {"input": str(Path(args.input).resolve()), "tasks": {}}
    print("| task | rung unit | rung | trials | Spearman rho |")
    print("| --- | --- | --- | --- | --- |")
    for task in sorted({run["task"] for run in runs}):
        mine = [run for run in runs if run["task"] == task]
        curves = trial_curves(mine)
        if not curves:
            continue
        table = correlations(curves)
        result["tasks"][task] = {"runs": [run.get("name") for run in mine], "trials": len(curves),
                                 "final_phase_from": sorted({c["final_source"] for c in curves}),
                                 "median_trial_seconds": statistics.median(c["seconds"][-1] for c in curves), "rungs": table}
        for row in table:
            value = "n/a" if row["rho"] is None else f"{row['rho']:.2f}"
            extra = f" ({row['left_out_no_epoch_yet']} left out)" if row.get("left_out_no_epoch_yet") else ""
            print(f"| {task} | {row['unit']} | {row['rung']} | {row['trials']}{extra} | {value} |")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
