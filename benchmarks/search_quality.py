"""Does the search beat chance? Optuna's samplers, with and without early stopping, against random search, over seeds.

    python benchmarks/search_quality.py [--tasks digits head50 full32] [--strategies random auto auto+asha]
        [--budgets 8 16] [--seeds 3 | --seed-list 0 2] [--work DIR] [--out search_quality.json] [--dry-run]

Each run is a real `python -m tuning.search` (Ray, Optuna's study, early stopping, retraining, test
evaluation) on this machine, on one of four tasks where trials are cheap but real:
- digits: scikit-learn's handwritten digits (real images, `real_data.write_digits`: 1,437 training
  and 360 test images, 10 classes, upscaled to 32 px), random initial weights, the whole network
  trained (unfreeze depth 8 to 16), batch size, learning rate, decay and momentum searched, up to 8
  epochs; the first trial is the fixed starting recipe (batch 32, lr 0.005, decay 1e-4, depth 16,
  momentum 0.9);
- head50: head-only trials (unfreeze depth 0, on cached features of the synthetic pretrained
  backbone) on a synthetic set of 50 car classes at 32 px: learning rate, decay, batch size,
  dropout and momentum are searched, 16 trials of up to 9 epochs;
- full32: the demo's 10 classes at 32 px with the top 1 to 3 blocks trained, 8 trials of up to 3
  epochs;
- demo: the demo itself (`experiments/demo.toml`): its space, with head-only warm-up epochs, and
  its 6 trials of up to 4 epochs.
A strategy is a sampler (`search.algorithm`: random, tpe, gp or auto) with early stopping
(`+asha`: `scheduler.kind = "asha"`) or without (`scheduler.kind = "none"`). `--budgets` sets
`search.num_samples` (default: the task's own). Run folders stay under `--work` (default
search_quality_runs/ in the current folder), so a stopped benchmark goes on: every finished run is written to `--out` at once,
and a rerun skips the (task, strategy, budget, seed) combinations already there. A run folder left
unfinished by a stopped benchmark is moved aside (`*.stale-<time>`) and its run starts again.

Per run it keeps, from `trials.parquet` and `best/metrics.json`: the best-so-far curve over the
training images spent (trials in the order they finished), every trial's per-epoch rows (for
`rung_correlation.py`), the retrained winner's test accuracy and the test set's size, the starting
configuration's (first `[[search.start]]` trial's) best validation accuracy, and the wall time.
It prints, per task, budget and strategy, the mean ± sd over seeds of the best validation accuracy,
the training images spent and the retrained winner's test accuracy; for each non-random strategy
the share of random search's images (same task, budget and seed) it needed to come within 1 point
of random's final best, and whether its test accuracy is at least random's minus one standard error.
Goal (issue 17): "auto+asha" reaches random's best (within 1 point) with <= 40 % of random's
training images (mean over seeds), and its retrained winner tests no worse than random's minus one
standard error.

The code searched with is whatever `python -m tuning.search` imports here: put a frozen copy first
with `PYTHONPATH=/path/to/worktree`; each run records the commit of the `tuning` package it used.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SAMPLERS = ("random", "tpe", "gp", "auto")
STRATEGIES = {**{name: (name, "none") for name in SAMPLERS}, **{f"{name}+asha": (name, "asha") for name in SAMPLERS}}
DEFAULT_STRATEGIES = ["random", "auto", "auto+asha"]
ROW_COLUMNS = ("trial_id", "epoch", "phase", "final_phase_epochs", "images_seen", "seconds_per_epoch", "val_accuracy",
               "best_val_accuracy", "status", "timestamp")

DIGITS_START = {"batch_size": 32, "learning_rate": 0.005, "lr_decay": 0.0001, "unfreeze_depth": 16, "momentum": 0.9}
TASKS = {
    "digits": {
        "data": "digits",
        "num_samples": 8,
        "experiment": """
[data]
format = "folders"
image_size = 32
horizontal_flip = false
validation_fraction = 0.2
seed = 0
[model]
weights = "none"
dropout = 0.2
[train]
momentum = 0.9
precision = "float32"
[search]
num_samples = 8
max_concurrent = 2
metric = "val_accuracy"
[search.space]
batch_size = { choice = [16, 32] }
learning_rate = { loguniform = [0.001, 0.05] }
lr_decay = { loguniform = [0.00001, 0.001] }
unfreeze_depth = { randint = [8, 16] }
momentum = { uniform = [0.8, 0.95] }
[[search.start]]
batch_size = 32
learning_rate = 0.005
lr_decay = 0.0001
unfreeze_depth = 16
momentum = 0.9
[scheduler]
max_epochs = 8
grace_period = 1
reduction_factor = 3
[resources]
cpus_per_trial = 1
gpus_per_trial = 0
""",
    },
    "head50": {
        "data": "synthetic",
        "spec": {"num_classes": 50, "train_per_class": 16, "test_per_class": 6, "seed": 11},
        "num_samples": 16,
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
        "data": "synthetic",
        "spec": {},
        "num_samples": 8,
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
    "demo": {
        "data": "synthetic",
        "spec": {},  # the demo's own synthetic cars
        "num_samples": 6,
        "experiment": (Path(__file__).resolve().parents[1] / "experiments" / "demo.toml").read_text(),
    },
}


def code_in_use() -> dict:
    """Which `tuning` package `python -m tuning.search` will import here, and its git commit (without importing it)."""
    spec = importlib.util.find_spec("tuning")
    folder = Path(spec.origin).parent.parent if spec and spec.origin else None
    info: dict = {"tuning": str(folder) if folder else None}
    if folder:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "carclf", "tuning"], capture_output=True, text=True)
        info.update(commit=commit.stdout.strip() or None, dirty=bool(dirty.stdout.strip()))
    return info


def experiment_file(work: Path, task: str) -> Path:
    """The task's experiment written as `work/<task>.toml` (what every run of the task reads)."""
    path = work / f"{task}.toml"
    path.write_text(TASKS[task]["experiment"])
    return path


def prepare_data(work: Path, task: str) -> Path:
    if TASKS[task]["data"] == "digits":
        from real_data import write_digits
        return write_digits(work / "data-digits")
    from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
    return generate_synthetic_cars(work / f"data-{task}", SyntheticSpec(**TASKS[task]["spec"]))


def run_name(task: str, strategy: str, budget: int, seed: int) -> str:
    return f"{task}-{strategy}-b{budget}-s{seed}"


def search_command(work: Path, task: str, strategy: str, budget: int, seed: int, root: Path, dry_run: bool) -> list[str]:
    experiment = experiment_file(work, task)
    algorithm, scheduler = STRATEGIES[strategy]
    return [sys.executable, "-m", "tuning.search", "--experiment", str(experiment), "--data-dir", str(root),
            "--storage-path", str(work / "runs"), "--name", run_name(task, strategy, budget, seed), "--no-dashboard",
            "--set", f"search.algorithm='{algorithm}'", "--set", f"scheduler.kind='{scheduler}'",
            "--set", f"search.seed={seed}", "--set", f"search.num_samples={budget}",
            "--set", f"data.cache_dir='{work / 'cache'}'", *(["--dry-run"] if dry_run else [])]


def _matches(row: pd.Series, point: dict) -> bool:
    for key, value in point.items():
        got = row.get(f"config/{key}")
        if got is None or (isinstance(got, float) and math.isnan(got)):
            return False
        if isinstance(value, float) or isinstance(got, float):
            if not math.isclose(float(got), float(value), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif got != value:
            return False
    return True


def read_run(run_dir: Path, start: dict | None) -> dict:
    """What a finished run folder says: curves, per-epoch rows, test accuracy, the starting configuration's score."""
    trials = pd.read_parquet(run_dir / "trials.parquet").dropna(subset=["epoch"])
    ordered = trials.sort_values("timestamp", kind="stable")
    last = ordered.groupby("trial_id").last().sort_values("timestamp", kind="stable")
    spent = [int(v) for v in last["images_seen"].cumsum()]
    best = [float(v) for v in last["best_val_accuracy"].cummax()]
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    columns = [c for c in ROW_COLUMNS if c in trials] + sorted(c for c in trials if c.startswith("config/"))
    rows = json.loads(ordered[columns].to_json(orient="records"))
    start_trial = start_score = None
    if start:
        matched = [trial_id for trial_id, row in last.iterrows() if _matches(row, start)]
        if matched:
            first = min(matched, key=lambda t: ordered.index[ordered["trial_id"] == t].min())
            start_trial, start_score = first, float(last.loc[first, "best_val_accuracy"])
    search = json.loads((run_dir / "search.json").read_text()) if (run_dir / "search.json").is_file() else {}
    test = metrics["test"]
    return {"images": spent, "best": best, "test_accuracy": test.get("accuracy"), "test_count": test.get("count"),
            "trials": int(last.shape[0]), "statuses": {k: int(v) for k, v in last["status"].value_counts().items()},
            "start_trial_id": start_trial, "start_best_val_accuracy": start_score,
            "winner": {"retrain_epochs": metrics.get("retrain_epochs")},
            "search_wall_s": search.get("wall_time_s"), "trials_s": search.get("trials_s"), "sampler": search.get("sampler"),
            "validation_size": search.get("validation_size"), "rows": rows}


def run_search(work: Path, task: str, strategy: str, budget: int, seed: int, dry_run: bool = False) -> dict:
    """One search, start to end, with its log under `work/logs`; its figures (`read_run`)."""
    root = prepare_data(work, task)
    name = run_name(task, strategy, budget, seed)
    run_dir = work / "runs" / name
    finished = (run_dir / "status.json").is_file() and json.loads((run_dir / "status.json").read_text()).get("stage") == "finished"
    if finished and not dry_run and (run_dir / "best" / "metrics.json").is_file():
        print(f"  {run_dir} is a finished run not yet recorded: reading it (its wall time is unknown)", flush=True)
        return {"task": task, "strategy": strategy, "budget": budget, "seed": seed, "name": name,
                "algorithm": STRATEGIES[strategy][0], "scheduler": STRATEGIES[strategy][1],
                "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": None, "run_dir": str(run_dir),
                **read_run(run_dir, DIGITS_START if task == "digits" else None)}
    if run_dir.exists() and not dry_run:
        stale = run_dir.with_name(f"{name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(stale)
        print(f"  moved the unfinished run folder aside: {stale}", flush=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{name}{'-dry' if dry_run else ''}.log"
    command = search_command(work, task, strategy, budget, seed, root, dry_run)
    started = time.time()
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.time() - started
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"{name}: tuning.search exited {done.returncode} after {wall:.0f} s; log {log}; last lines:\n    "
                           + "\n    ".join(tail))
    result = {"task": task, "strategy": strategy, "budget": budget, "seed": seed, "name": name,
              "algorithm": STRATEGIES[strategy][0], "scheduler": STRATEGIES[strategy][1],
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": round(wall, 1),
              "command": " ".join(command), "log": str(log), "run_dir": str(run_dir)}
    if dry_run:
        return result
    start = DIGITS_START if task == "digits" else None
    return {**result, **read_run(run_dir, start)}


def images_to_reach(run: dict, target: float) -> float | None:
    """The training images a run had spent when its best first came within reach of `target`."""
    return next((images for images, best in zip(run["images"], run["best"]) if best >= target - 1e-12), None)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> list[dict]:
    """Per task, budget and strategy: the figures over seeds, and each non-random strategy against random."""
    rows = []
    for task, budget in sorted({(run["task"], run["budget"]) for run in runs}):
        mine = [run for run in runs if run["task"] == task and run["budget"] == budget]
        random_runs = {run["seed"]: run for run in mine if run["strategy"] == "random"}
        for strategy in STRATEGIES:
            chosen = sorted((run for run in mine if run["strategy"] == strategy), key=lambda run: run["seed"])
            if not chosen:
                continue
            shares, test_ok = [], []
            for run in chosen:
                baseline = random_runs.get(run["seed"])
                if not baseline or strategy == "random":
                    continue
                reached = images_to_reach(run, baseline["best"][-1] - 0.01)
                shares.append(reached / baseline["images"][-1] if reached is not None else None)
                p, n = baseline["test_accuracy"], baseline.get("test_count")
                test_ok.append(bool(run["test_accuracy"] >= p - math.sqrt(p * (1 - p) / n)) if n else None)
            rows.append({
                "task": task, "budget": budget, "strategy": strategy, "seeds": [run["seed"] for run in chosen],
                "best": [run["best"][-1] for run in chosen], "images": [run["images"][-1] for run in chosen],
                "test": [run["test_accuracy"] for run in chosen], "test_count": [run.get("test_count") for run in chosen],
                "start_best": [run.get("start_best_val_accuracy") for run in chosen],
                "wall_s": [run.get("wall_s") for run in chosen],
                "share_of_random_images_to_reach_its_best": shares, "test_at_least_random_minus_1se": test_ok,
            })
    return rows


def _mean_sd(values: list, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    return f"{statistics.mean(values):.{digits}f} ± {_sd(values):.{digits}f}"


def print_table(rows: list[dict]) -> None:
    print("\n| task | trials | strategy | seeds | best val accuracy | start config's val accuracy | training images | "
          "test accuracy (n) | share of random's images to within 1 pt of its best | test >= random's - 1 SE | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        shares = row["share_of_random_images_to_reach_its_best"]
        reached = [s for s in shares if s is not None]
        share = (f"{statistics.mean(reached):.0%} (reached in {len(reached)} of {len(shares)} seeds: "
                 + ", ".join("never" if s is None else f"{s:.0%}" for s in shares) + ")") if reached \
            else (f"never (in {len(shares)} seeds)" if shares else "")
        ok = row["test_at_least_random_minus_1se"]
        test_ok = f"{sum(bool(v) for v in ok)} of {len(ok)} seeds" if ok else ""
        count = next((c for c in row["test_count"] if c), "")
        print(f"| {row['task']} | {row['budget']} | {row['strategy']} | {len(row['seeds'])} | {_mean_sd(row['best'])} | "
              f"{_mean_sd(row['start_best'])} | {_mean_sd(row['images'], 0)} | {_mean_sd(row['test'])} ({count}) | {share} | "
              f"{test_ok} | {_mean_sd(row['wall_s'], 0)} |")
    goal = [row for row in rows if row["strategy"] == "auto+asha"]
    for row in goal:
        shares = row["share_of_random_images_to_reach_its_best"]
        if not shares:
            continue
        reached = [s for s in shares if s is not None]
        image_goal = len(reached) == len(shares) and statistics.mean(reached) <= 0.40
        test_goal = all(row["test_at_least_random_minus_1se"])
        print(f"goal (issue 17), {row['task']} at {row['budget']} trials, {len(shares)} seed(s): images "
              f"{'met' if image_goal else 'missed'}, test {'met' if test_goal else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["digits"], choices=list(TASKS))
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=list(STRATEGIES))
    parser.add_argument("--budgets", nargs="+", type=int, help="search.num_samples values (default: each task's own)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    seeds.add_argument("--seed-list", nargs="+", type=int, help="these seeds")
    parser.add_argument("--work", default="search_quality_runs", help="run folders, data, caches, logs (persistent)")
    parser.add_argument("--out", default="search_quality.json")
    parser.add_argument("--dry-run", action="store_true", help="run each search with --dry-run; record nothing")
    parser.add_argument("--summary-only", action="store_true", help="print the table of what --out holds; run nothing")
    parser.add_argument("--stop-file", default="search_quality.stop", help="start no new run while this file exists")
    args = parser.parse_args()
    work, out = Path(args.work).resolve(), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    document = json.loads(out.read_text()) if out.is_file() else {}
    runs: list[dict] = document.get("runs", [])
    for run in runs:  # results written before budgets were recorded ran at the task's own size
        run.setdefault("budget", TASKS.get(run["task"], {}).get("num_samples"))
    failures: list[dict] = document.get("failures", [])
    seed_list = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    code = code_in_use()
    print(f"code searched with: {code}", flush=True)

    def save() -> None:
        out.write_text(json.dumps({"runs": runs, "failures": failures, "summary": summarize(runs)}, indent=1))

    done = {(run["task"], run["strategy"], run["budget"], run["seed"]) for run in runs}
    if not args.summary_only:
        for task in args.tasks:
            for budget in args.budgets or [TASKS[task]["num_samples"]]:
                for seed in seed_list:
                    for strategy in args.strategies:
                        key = (task, strategy, budget, seed)
                        if key in done and not args.dry_run:
                            print(f"skipped {run_name(*key[:1], strategy, budget, seed)}: already in {out}", flush=True)
                            continue
                        if Path(args.stop_file).exists():
                            print(f"{args.stop_file} exists: starting no new run", flush=True)
                            save()
                            print_table(summarize(runs))
                            return
                        print(f"running {run_name(task, strategy, budget, seed)} ...", flush=True)
                        try:
                            run = run_search(work, task, strategy, budget, seed, args.dry_run)
                        except RuntimeError as error:
                            print(f"FAILED {error}", flush=True)
                            failures.append({"task": task, "strategy": strategy, "budget": budget, "seed": seed,
                                             "date": datetime.datetime.now().isoformat(timespec="seconds"), "error": str(error),
                                             "code": code})
                            save()
                            continue
                        if args.dry_run:
                            print(f"  dry run ok in {run['wall_s']} s (log {run['log']})", flush=True)
                            continue
                        run["code"] = code
                        runs.append(run)
                        done.add(key)
                        save()  # kept if the benchmark is stopped
                        print(f"ran {run['name']} in {run['wall_s']} s: best {run['best'][-1]:.3f} after {run['images'][-1]} "
                              f"images, test {run['test_accuracy']:.3f} (n={run['test_count']}), start config "
                              f"{run['start_best_val_accuracy']}", flush=True)
    if not args.summary_only:
        save()
    print_table(summarize(runs))


if __name__ == "__main__":
    main()
