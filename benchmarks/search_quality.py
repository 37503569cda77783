"""Does the search beat chance? Random search, TPE and TPE + ASHA at equal trial counts, over seeds.

    python benchmarks/search_quality.py [--seeds 5] [--tasks head50 full32]

Each run is a real `python -m tuning.search` (Ray, Optuna's study, ASHA, retraining, test evaluation)
on this machine, on one of two tasks where trials are cheap but real:
- head50: head-only trials (unfreeze depth 0, on cached features of the synthetic pretrained
  backbone) on a synthetic set of 50 car classes at 32 px: learning rate, decay, batch size,
  dropout and momentum are searched, 16 trials of up to 9 epochs;
- full32: the demo's 10 classes at 32 px with the top 1 to 3 blocks trained, 8 trials of up to 3
  epochs.
For every strategy and seed it reads `trials.parquet` (trials in the order they finished, each
with its training images and its score) and `best/metrics.json`. It prints, per task and strategy,
the mean ± sd of the best validation accuracy, of the training images spent and of the retrained
winner's test accuracy, and the share of random search's images TPE + ASHA needed to come within 1
point of random search's final best. Writes `search_quality.json` in the current folder.
Goal (issue 12): that share <= 40 % (mean over seeds), and a test accuracy at least random's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars

STRATEGIES = {"random": ("random", "none"), "tpe": ("optuna", "none"), "tpe+asha": ("optuna", "asha")}
TASKS = {
    "head50": {
        "spec": SyntheticSpec(num_classes=50, train_per_class=16, test_per_class=6, seed=11),
        "experiment": """
[data]
format = "devkit"
image_size = 32
validation_fraction = 0.25
[model]
weights = "synthetic"
[train]
unfreeze_depth = 0
feature_views = 4
[search]
num_samples = 16
max_concurrent = 2
metric = "val_accuracy"
[search.space]
learning_rate = { loguniform = [0.0001, 3.0] }
lr_decay = { loguniform = [0.000001, 0.01] }
batch_size = { choice = [16, 32, 64] }
dropout = { uniform = [0.0, 0.6] }
momentum = { uniform = [0.5, 0.99] }
[scheduler]
max_epochs = 9
grace_period = 1
reduction_factor = 3
""",
    },
    "full32": {
        "spec": SyntheticSpec(),
        "experiment": """
[data]
format = "devkit"
image_size = 32
[model]
weights = "synthetic"
[search]
num_samples = 8
max_concurrent = 2
metric = "val_accuracy"
[search.space]
learning_rate = { loguniform = [0.001, 0.1] }
lr_decay = { loguniform = [0.00001, 0.001] }
batch_size = { choice = [16, 32] }
unfreeze_depth = { randint = [1, 3] }
[scheduler]
max_epochs = 3
grace_period = 1
reduction_factor = 2
""",
    },
}


def run_search(folder: Path, task: str, strategy: str, seed: int) -> dict:
    """One search; its best-so-far curve over the training images spent, and its retrained winner's test accuracy."""
    root = generate_synthetic_cars(folder / f"data-{task}", TASKS[task]["spec"])
    experiment = folder / f"{task}.toml"
    experiment.write_text(TASKS[task]["experiment"])
    algorithm, scheduler = STRATEGIES[strategy]
    name = f"{task}-{strategy}-{seed}"
    subprocess.run([sys.executable, "-m", "tuning.search", "--experiment", str(experiment), "--data-dir", str(root),
                    "--storage-path", str(folder / "runs"), "--name", name, "--no-dashboard",
                    "--set", f"search.algorithm='{algorithm}'", "--set", f"scheduler.kind='{scheduler}'",
                    "--set", f"search.seed={seed}"],
                   check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    run_dir = folder / "runs" / name
    trials = pd.read_parquet(run_dir / "trials.parquet").dropna(subset=["epoch"])
    last = trials.sort_values("timestamp").groupby("trial_id").last().sort_values("timestamp")
    spent = last["images_seen"].cumsum().tolist()
    best = last["best_val_accuracy"].cummax().tolist()
    test = json.loads((run_dir / "best" / "metrics.json").read_text())["test"]["accuracy"]
    return {"task": task, "strategy": strategy, "seed": seed, "images": spent, "best": best, "test_accuracy": test}


def images_to_reach(run: dict, target: float) -> float | None:
    """The training images a run had spent when its best first came within reach of `target`."""
    return next((images for images, best in zip(run["images"], run["best"]) if best >= target), None)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for task in sorted({run["task"] for run in runs}):
        mine = [run for run in runs if run["task"] == task]
        random_runs = {run["seed"]: run for run in mine if run["strategy"] == "random"}
        for strategy in STRATEGIES:
            chosen = [run for run in mine if run["strategy"] == strategy]
            if not chosen:
                continue
            shares = []
            for run in chosen:
                baseline = random_runs.get(run["seed"])
                if baseline and strategy == "tpe+asha":
                    reached = images_to_reach(run, baseline["best"][-1] - 0.01)
                    shares.append(reached / baseline["images"][-1] if reached is not None else None)
            rows.append({
                "task": task, "strategy": strategy, "seeds": len(chosen),
                "best": [run["best"][-1] for run in chosen], "images": [run["images"][-1] for run in chosen],
                "test": [run["test_accuracy"] for run in chosen], "share_of_random_images_to_reach_its_best": shares,
            })
    return rows


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            for seed in range(args.seeds):
                for strategy in STRATEGIES:
                    runs.append(run_search(Path(folder), task, strategy, seed))
                    Path("search_quality.json").write_text(json.dumps({"runs": runs}, indent=2))  # kept if stopped
                    print(f"{task} {strategy} seed {seed}: best {runs[-1]['best'][-1]:.3f} after {runs[-1]['images'][-1]} images, "
                          f"test {runs[-1]['test_accuracy']:.3f}", flush=True)
    rows = summarize(runs)
    Path("search_quality.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    print("\n| task | strategy | best validation accuracy | training images | retrained winner's test accuracy | "
          "TPE + ASHA: share of random's images to come within 1 point of its best |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        shares = [share for share in row["share_of_random_images_to_reach_its_best"]]
        reached = [share for share in shares if share is not None]
        share = (f"{statistics.mean(reached):.0%} (reached in {len(reached)} of {len(shares)} seeds)" if reached
                 else f"never (in {len(shares)} seeds)" if shares else "")
        print(f"| {row['task']} | {row['strategy']} | {_mean_sd(row['best'])} | {_mean_sd(row['images'], 0)} | "
              f"{_mean_sd(row['test'])} | {share} |")


if __name__ == "__main__":
    main()
