"""The demo's wall time, first run and re-runs, warm trial workers against one process per trial, per backend.

    python benchmarks/demo_time.py [--backends tensorflow jax] [--warm-only] [--reruns N]

For each Keras backend, with a fresh cache folder (`XDG_CACHE_HOME`): the first run of
`python -m tuning.search` generates the synthetic data, decodes it, pretrains the synthetic backbone,
probes it and builds the cached features before its trials (warm workers, the default). Then two
re-runs on that cache, side by side: warm workers (`run.reuse_workers = true`) and one process per
trial (`false`); `--reruns N` repeats the warm re-run N times (the ratio takes their median). For
each run: the wall time, each phase's seconds (`search.json`, `best/metrics.json`), the seconds
after the trials (delivering the winner and the start, the report, Ray's stop), the useful fraction, and from `trials.parquet` the seconds every trial spent
starting, compiling, training, evaluating and checkpointing. For a trial whose models came compiled
from an earlier trial of its worker: its setup + compile seconds against the worker's first trial.
On JAX, the XLA step programs each trial compiled (its `compiles` metric). Prints the first run's cost
against the warm re-run's and the CPU (`lscpu`); writes `demo_time.json`. Run from another checkout's
folder (with this script's path), it times that checkout's carclf: before and after, on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from machine import cpu_model

TRIAL_PHASES = ("setup_seconds", "compile_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds")


def timed_demo(backend: str, cache: Path, runs: Path, name: str, reuse_workers: bool) -> tuple[float, float]:
    """The demo's wall seconds, and the time (`time.time()`) it ended."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuning.search", "--storage-path", str(runs), "--name", name, "--no-dashboard",
                    "--set", f"run.reuse_workers={str(reuse_workers).lower()}"],
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "KERAS_BACKEND": backend, "XDG_CACHE_HOME": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - started, time.time()


def last_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's last report (its cumulative figures: setup, compile seconds, compiles)."""
    return trials.dropna(subset=["epoch"]).sort_values("epoch").groupby("trial_id").tail(1)


def describe_run(run_dir: Path, timed: tuple[float, float], reuse_workers: bool) -> dict:
    search = json.loads((run_dir / "search.json").read_text())
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = trials.dropna(subset=["epoch"])
    last = last_rows(trials)
    per_trial = {
        "setup_seconds": float(last["setup_seconds"].sum()),
        "compile_seconds": float(last["compile_seconds"].sum()),
        "train_seconds": float(epochs["train_seconds"].sum()),
        "eval_seconds": float(epochs["eval_seconds"].sum()),
        "checkpoint_seconds": float(epochs["checkpoint_seconds"].fillna(0).sum()),
    }
    (wall_s, ended), start = timed, metrics.get("start", {})
    row = {"reuse_workers": reuse_workers, "wall_s": wall_s, "prepare_s": search["prepare_s"],
           "backbone_s": search.get("backbone_s"), "features_s": search["features_s"],
           "trials_s": search["trials_s"], "retrain_s": metrics.get("retrain_s", 0.0), "evaluate_s": metrics["evaluate_s"],
           "start_retrain_s": start.get("retrain_s", 0.0), "after_trials_s": ended - search["finished"],
           "useful_fraction": search["useful_fraction"], "trials": int(last["trial_id"].nunique()), "trial_totals": per_trial,
           "test_accuracy": metrics["test"].get("accuracy")}
    first = last[last["worker_trials"] == 1]
    reused = last[last["reused_compiled"].astype(bool)]
    row["first_trial_setup_plus_compile_s"] = (first["setup_seconds"] + first["compile_seconds"]).tolist()
    row["reused_trial_setup_plus_compile_s"] = (reused["setup_seconds"] + reused["compile_seconds"]).tolist()
    if "compiles" in last:
        row["compiles_first_trials"] = first["compiles"].tolist()
        row["compiles_reused_trials"] = reused["compiles"].tolist()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--warm-only", action="store_true", help="re-run with warm workers only (not one process per trial)")
    parser.add_argument("--reruns", type=int, default=1, help="warm re-runs on the first run's cache (default 1)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends:
            cache, runs = Path(folder) / f"cache-{backend}", Path(folder) / f"runs-{backend}"
            first = timed_demo(backend, cache, runs, "first", True)
            results.append({"backend": backend, "run": "first", **describe_run(runs / "first", first, True)})
            names = [("again-warm" if n == 0 else f"again-warm-{n + 1}", True) for n in range(args.reruns)]
            for name, reuse in names + ([] if args.warm_only else [("again-per-trial", False)]):
                timed = timed_demo(backend, cache, runs, name, reuse)
                results.append({"backend": backend, "run": name, **describe_run(runs / name, timed, reuse)})
    model = cpu_model()
    print(f"CPU: {model}, {os.cpu_count()} cores; carclf from {Path.cwd()}")
    Path("demo_time.json").write_text(json.dumps({"cpu": model, "cores": os.cpu_count(), "runs": results}, indent=2))
    print("| backend | run | workers | wall | backbone | features + probe | trials | after the trials | retraining: winner, start | "
          "useful fraction | setup / compile / train / eval / checkpoint s (all trials) | first trial's setup + compile | "
          "reused trial's | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        totals = " / ".join(f"{row['trial_totals'][key]:.1f}" for key in TRIAL_PHASES)
        first = ", ".join(f"{v:.1f}" for v in row["first_trial_setup_plus_compile_s"])
        reused = ", ".join(f"{v:.1f}" for v in row["reused_trial_setup_plus_compile_s"]) or "none"
        backbone = "not recorded" if row["backbone_s"] is None else f"{row['backbone_s']:.0f} s"  # search.json before 2026-12-06
        print(f"| {row['backend']} | {row['run']} | {'warm' if row['reuse_workers'] else 'per trial'} | {row['wall_s']:.0f} s | "
              f"{backbone} | {row['features_s']:.0f} s | {row['trials_s']:.0f} s | {row['after_trials_s']:.0f} s | "
              f"{row['retrain_s']:.1f} s, {row['start_retrain_s']:.1f} s | "
              f"{row['useful_fraction']:.0%} | {totals} | {first} s | {reused} s | {row['test_accuracy']:.2f} |")
        if "compiles_first_trials" in row:
            print(f"|   | compiles (JAX): first trials {row['compiles_first_trials']}, reused {row['compiles_reused_trials']} |")
    for backend in args.backends:
        runs = [row for row in results if row["backend"] == backend]
        again = statistics.median(row["wall_s"] for row in runs if row["run"].startswith("again-warm"))
        print(f"{backend}: the first run costs {runs[0]['wall_s'] / again:.2f}x the warm re-run (median {again:.0f} s)")


if __name__ == "__main__":
    main()
