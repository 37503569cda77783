"""The demo's wall time, first run and re-run, and a trial's first-epoch (compile) seconds, per backend.

    python benchmarks/demo_time.py [--backends tensorflow jax]

For each Keras backend, with a fresh cache folder (`XDG_CACHE_HOME`): the first run of
`python -m tuning.search` generates the synthetic data, decodes it, pretrains the synthetic backbone
and builds the cached features before its trials; the re-run (another run name, same cache) reuses
all of that. From the re-run's `trials.parquet`: the median seconds of a trial's first epoch (build,
tracing, compilation) against its later epochs. Prints a markdown table and writes `demo_time.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def timed_demo(backend: str, cache: Path, runs: Path, name: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuning.search", "--storage-path", str(runs), "--name", name, "--no-dashboard"],
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "KERAS_BACKEND": backend, "XDG_CACHE_HOME": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends:
            cache, runs = Path(folder) / f"cache-{backend}", Path(folder) / f"runs-{backend}"
            first = timed_demo(backend, cache, runs, "first")
            again = timed_demo(backend, cache, runs, "again")
            trials = pd.read_parquet(runs / "again" / "trials.parquet")
            epochs = trials.dropna(subset=["epoch"])
            first_epoch = epochs[epochs["epoch"] == 1]["seconds_per_epoch"].median()
            later = epochs[epochs["epoch"] > 1]["seconds_per_epoch"].median()
            report = json.loads((runs / "again" / "report.json").read_text())
            results.append({"backend": backend, "first_run_s": first, "rerun_s": again, "first_epoch_s": first_epoch,
                            "later_epoch_s": later, "trials": int(trials["trial_id"].nunique()),
                            "test_accuracy": report["best"]["test"]["accuracy"]})
    Path("demo_time.json").write_text(json.dumps(results, indent=2))
    print("| backend | first run (data, store, backbone, features, search) | re-run | trial's first epoch (median) | later epochs (median) | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        print(f"| {row['backend']} | {row['first_run_s']:.0f} s | {row['rerun_s']:.0f} s | {row['first_epoch_s']:.1f} s | "
              f"{row['later_epoch_s']:.1f} s | {row['test_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
