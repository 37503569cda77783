"""Whole searches replayed on recorded learning curves, through carclf's own searcher and scheduler.

    python benchmarks/replay.py [--task digits|demo] [--table results/curves_<task>.jsonl]
        [--strategies random tpe gp auto] [--budgets 8 16] [--seeds 50] [--out results/replay_<task>.json]

A live digits search costs 15-27 minutes here, so three seeds per strategy cannot tell strategies a
few points apart. A replayed one trains nothing: `tuning.tuner.make_search` builds the search's
`StudySearcher` and scheduler (`NoiseAwareASHA`, or none) from the task's experiment, exactly as
`python -m tuning.search` does, and this script plays Ray Tune's part around them:

- **Two trials at once** (`search.max_concurrent`) on a simulated clock: a trial's epochs take the
  seconds recorded for them, and results reach the scheduler and searcher in the order of the clock.
- **As Ray's `TuneController` calls them**: each epoch's result goes to the scheduler's
  `on_trial_result`, then, unless it stopped the trial, to the searcher's; a trial's last result
  (its last epoch, a divergence, or ASHA's stop) goes to both `on_trial_complete`. A result is what
  the trainable reports: `epoch`, `final_phase_epochs`, `val_accuracy`, `best_val_accuracy` (the
  objective: best so far, the worst value once diverged), `diverged`, `images_seen`, and `done` at
  the last epoch.
- **A proposed point is mapped to the nearest recorded configuration** (`nearest`): each dimension
  scaled to [0, 1] (in log space for a loguniform range), a different choice counting 1, Euclidean
  distance. Where that configuration was trained with two training seeds, each replayed trial
  draws one of its curves at random (seeded by the search's seed).
- Per search it keeps the best objective so far against the images trained so far (every epoch of
  every trial), the winner (the trial with the best objective), and the winner's recorded test
  accuracy at its best epoch, the model the trial would deliver.

Per task, budget and strategy (a sampler with early stopping, `+asha`, or without; `+estimate`: the
sampler told each stopped trial's estimated final value, `search.stopped_trials = "estimate"`), over seeds
0 .. N-1: the mean best validation accuracy, the images trained, the winner's test accuracy, and
against random search of the same budget and seed, the share of random's images a search needed to
come within 1 point of random's final best; a search that never does is a miss, and the reach
rate is printed beside the mean share of those that reached. Means carry a 95 % interval (1.96
standard errors over seeds). Resumable: finished cells are kept in `--out`, and a rerun skips them.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from curves import TASKS as CURVE_TASKS
from curves import read_table
from machine import cpu_model
from search_quality import STRATEGIES, experiment_file

HERE = Path(__file__).resolve().parent
# search_quality's strategies (a sampler, with ASHA or not), and the model-based samplers with ASHA told of stopped trials
REPLAY_STRATEGIES = {**{name: (*setting, "sampler") for name, setting in STRATEGIES.items()},
                     **{f"{name}+asha+estimate": (name, "asha", "estimate") for name in ("tpe", "gp", "auto")}}
REACH = 0.01  # within 1 point of random search's final best


@dataclass(frozen=True)
class Curve:
    """One configuration trained with one training seed: its every epoch (`curves.py`)."""

    configuration: int
    seed: int
    params: dict
    epochs: list[dict]


def read_curves(path: Path, task: str) -> tuple[list[Curve], int]:
    """The task's curves in the table (`curves.read_table`), and the validation set's size they were scored on."""
    lines = [line for line in read_table(path) if line.get("task") == task]
    if not lines:
        raise SystemExit(f"{path}: no learning curve of task {task!r}; record some with benchmarks/curves.py")
    curves = [Curve(line["configuration"], line["seed"], line["params"], line["epochs"]) for line in lines]
    return curves, lines[0]["validation_size"]


def unit_position(space, point: dict) -> tuple[np.ndarray, list]:
    """A point's numeric dimensions scaled to [0, 1] (log space for loguniform), and its choices."""
    numbers, choices = [], []
    for dimension in space.dimensions:
        value = point[dimension.name]
        if dimension.kind == "choice":
            choices.append(value)
            continue
        low, high = dimension.args
        if dimension.kind == "loguniform":
            value, low, high = math.log(value), math.log(low), math.log(high)
        numbers.append((value - low) / (high - low) if high > low else 0.0)
    return np.array(numbers), choices


def nearest(space, point: dict, recorded: dict[int, dict]) -> int:
    """The recorded configuration nearest `point` (see the module docstring)."""
    position, choices = unit_position(space, point)

    def distance(params: dict) -> float:
        other, other_choices = unit_position(space, params)
        mismatched = sum(a != b for a, b in zip(choices, other_choices))
        return float(np.sum((position - other) ** 2) + mismatched)

    return min(recorded, key=lambda number: (distance(recorded[number]), number))


def epoch_result(curve: Curve, index: int, best: float | None, objective: str, worst: float, max_epochs: int) -> dict:
    """What the trainable reports after the curve's epoch `index` (see the module docstring)."""
    epoch = curve.epochs[index]
    value = epoch["val_accuracy"]
    diverged = bool(epoch["diverged"]) or value is None
    last = diverged or epoch["epoch"] >= max_epochs or index == len(curve.epochs) - 1
    return {"epoch": epoch["epoch"], "final_phase_epochs": epoch["final_phase_epochs"], "val_accuracy": value,
            objective: worst if diverged or best is None else best, "diverged": diverged,
            "images_seen": epoch["images_seen"], "done": last}


def replay_search(experiment, curves: list[Curve], validation_size: int) -> dict:
    """One whole search on recorded curves (see the module docstring); its record."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from tuning.trials import Selection
    from tuning.tuner import make_search

    search, selection = experiment.search, Selection.of(experiment.search)
    searcher, scheduler, rung_log = make_search(experiment, validation_size, run_id=None)
    scheduler.set_search_properties(selection.objective, selection.mode)  # as Tune does before the first trial
    recorded = {curve.configuration: curve.params for curve in curves}
    by_configuration: dict[int, list[Curve]] = {}
    for curve in curves:
        by_configuration.setdefault(curve.configuration, []).append(curve)
    rng = np.random.default_rng(search.seed)
    max_epochs, objective = experiment.scheduler.max_epochs, selection.objective
    events: list[tuple[float, int, str]] = []  # (clock at the end of the trial's next epoch, order, trial id)
    trials: dict[str, dict] = {}
    clock, images, progress, asked, finished = 0.0, 0, [], 0, False

    def start() -> bool:
        nonlocal asked
        trial_id = f"replay_{asked:05d}"
        config = searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return False
        number = nearest(search.space, config, recorded)
        choices = by_configuration[number]
        curve = choices[int(rng.integers(len(choices)))]
        trials[trial_id] = {"curve": curve, "next": 0, "best": None, "best_index": None, "status": "running"}
        heapq.heappush(events, (clock + curve.epochs[0]["seconds"], asked, trial_id))
        asked += 1
        return True

    while True:
        while not finished and asked < search.num_samples and sum(t["status"] == "running" for t in trials.values()) < search.max_concurrent:
            finished = not start()
        if not events:
            break
        clock, order, trial_id = heapq.heappop(events)
        trial = trials[trial_id]
        curve, index = trial["curve"], trial["next"]
        value = curve.epochs[index]["val_accuracy"]
        if value is not None and (trial["best"] is None or selection.improves(value, trial["best"])):
            trial["best"], trial["best_index"] = value, index
        result = epoch_result(curve, index, trial["best"], objective, selection.worst, max_epochs)
        images += curve.epochs[index]["images_seen"] - (curve.epochs[index - 1]["images_seen"] if index else 0)
        handle = SimpleNamespace(trial_id=trial_id)  # what the schedulers read of Ray's Trial
        decision = TrialScheduler.STOP if result["done"] else scheduler.on_trial_result(None, handle, result)
        if decision != TrialScheduler.STOP:
            searcher.on_trial_result(trial_id, result)
            trial["next"] = index + 1
            heapq.heappush(events, (clock + curve.epochs[index + 1]["seconds"], order, trial_id))
        else:
            scheduler.on_trial_complete(None, handle, result)
            searcher.on_trial_complete(trial_id, result=result)
            trial["status"] = "diverged" if result["diverged"] else "finished" if result["done"] else "stopped"
            trial["epochs"] = index + 1
        objective_values = [t["best"] for t in trials.values() if t["best"] is not None and t["status"] != "diverged"]
        best_so_far = (max if selection.mode == "max" else min)(objective_values) if objective_values else None
        progress.append((images, best_so_far, round(clock, 1)))
    told = [trial.state.name for trial in searcher.study.get_trials(deepcopy=False)]
    stops = [d for d in rung_log.decisions if d["decision"] == "stopped"] if rung_log is not None else []
    return {**search_record(trials, progress, clock, selection), "study": {state: told.count(state) for state in sorted(set(told))},
            "rung_stops": len(stops)}


def search_record(trials: dict[str, dict], progress: list, clock: float, selection) -> dict:
    """A replayed search's figures: its trials, best-so-far against images, and the winner's recorded test accuracy."""
    ranked = [t for t in trials.values() if t["best"] is not None and t["status"] != "diverged"]
    winner = (max if selection.mode == "max" else min)(ranked, key=lambda t: t["best"]) if ranked else None
    test = winner["curve"].epochs[winner["best_index"]]["test_accuracy"] if winner else None
    return {
        "trials": [{"configuration": t["curve"].configuration, "seed": t["curve"].seed, "epochs": t["epochs"], "status": t["status"],
                    "best": t["best"]} for t in trials.values()],
        "images": [point[0] for point in progress], "best": [point[1] for point in progress],
        "total_images": progress[-1][0] if progress else 0, "final_best": winner["best"] if winner else None,
        "winner": {"configuration": winner["curve"].configuration, "seed": winner["curve"].seed,
                   "best_epoch": winner["best_index"] + 1, "test_accuracy": test} if winner else None,
        "distinct_configurations": len({t["curve"].configuration for t in trials.values()}), "seconds": round(clock, 1),
    }


def replay_experiment(path: Path, strategy: str, budget: int, seed: int):
    """The task's experiment file (`search_quality.experiment_file`) as a live search of this strategy, budget and seed
    would read it."""
    from tuning.experiment import load_experiment

    algorithm, kind, stopped = REPLAY_STRATEGIES[strategy]
    return load_experiment(path, [f"data.root={str(path.parent)!r}",  # read by no replay: the curves stand for the data
                                  f"search.algorithm='{algorithm}'", f"scheduler.kind='{kind}'", f"search.seed={seed}",
                                  f"search.num_samples={budget}",
                                  f"search.stopped_trials='{stopped}'"])


def images_to_reach(search: dict, target: float) -> int | None:
    """The images a search had trained when its best first came within `REACH` of `target` (None: never)."""
    return next((images for images, best in zip(search["images"], search["best"]) if best is not None and best >= target - REACH - 1e-12), None)


def interval(values: list[float], digits: int = 3) -> str:
    """The mean with its 95 % interval (1.96 standard errors over seeds)."""
    if not values:
        return "—"
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {half:.{digits}f}"


def summarize(cells: dict[str, list[dict]]) -> list[dict]:
    """Per budget and strategy, over seeds, against random search of the same budget and seed."""
    rows = []
    for key, searches in sorted(cells.items()):
        budget, strategy = key.split("/")
        baseline = {s["seed"]: s for s in cells.get(f"{budget}/random", [])}
        shares, reached = [], 0
        for s in searches:
            random_search = baseline.get(s["seed"])
            if random_search is None or random_search["final_best"] is None:
                continue
            spent = images_to_reach(s, random_search["final_best"])
            if spent is not None:
                reached += 1
                shares.append(spent / random_search["total_images"])
        compared = sum(1 for s in searches if s["seed"] in baseline)
        tests = [s["winner"]["test_accuracy"] for s in searches if s["winner"] and s["winner"]["test_accuracy"] is not None]
        random_tests = {seed: r["winner"]["test_accuracy"] for seed, r in baseline.items() if r["winner"]}
        test_differences = [s["winner"]["test_accuracy"] - random_tests[s["seed"]] for s in searches
                            if s["winner"] and s["seed"] in random_tests and s["winner"]["test_accuracy"] is not None
                            and random_tests[s["seed"]] is not None]
        rows.append({"budget": int(budget), "strategy": strategy, "seeds": len(searches),
                     "best": interval([s["final_best"] for s in searches if s["final_best"] is not None]),
                     "images": interval([float(s["total_images"]) for s in searches], 0),
                     "test": interval(tests), "test_minus_random": interval(test_differences) if strategy != "random" else "",
                     "reach_rate": f"{reached}/{compared}" if strategy != "random" else "",
                     "share_of_random_images": interval(shares) if strategy != "random" else "",
                     "distinct": interval([float(s["distinct_configurations"]) for s in searches], 1)})
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| trials | strategy | seeds | best val accuracy | training images | winner's test accuracy | test − random's | "
          "reached random's best (within 1 pt) | share of random's images, of those that reached | distinct configurations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['budget']} | {row['strategy']} | {row['seeds']} | {row['best']} | {row['images']} | {row['test']} | "
              f"{row['test_minus_random']} | {row['reach_rate']} | {row['share_of_random_images']} | {row['distinct']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits", choices=CURVE_TASKS)
    parser.add_argument("--table", help="the learning curves (default: results/curves_<task>.jsonl beside this script)")
    parser.add_argument("--strategies", nargs="+", default=list(REPLAY_STRATEGIES), choices=list(REPLAY_STRATEGIES))
    parser.add_argument("--budgets", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--seeds", type=int, default=50, help="seeds 0 .. N-1 per cell")
    parser.add_argument("--work", default="replay_work", help="the task's experiment file")
    parser.add_argument("--out", help="the searches and table (default: results/replay_<task>.json beside this script)")
    args = parser.parse_args()
    logging.getLogger("tuning").setLevel(logging.WARNING)
    table = Path(args.table) if args.table else HERE / "results" / f"curves_{args.task}.jsonl"
    out = Path(args.out) if args.out else HERE / "results" / f"replay_{args.task}.json"
    curves, validation_size = read_curves(table, args.task)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = experiment_file(work, args.task)
    document = json.loads(out.read_text()) if out.is_file() else {}
    if document.get("table_curves") not in (None, len(curves)):
        print(f"{out} was replayed on {document['table_curves']} curves and {table} now holds {len(curves)}: replaying anew")
        document = {}
    cells: dict[str, list[dict]] = document.get("cells", {})
    print(f"{table}: {len(curves)} curves of {len({c.configuration for c in curves})} configurations", flush=True)

    def save() -> None:
        from tuning.samplers import choose_sampler

        auto = {budget: choose_sampler("auto", budget)[0] for budget in args.budgets}  # GP where PyTorch is installed
        out.write_text(json.dumps({"task": args.task, "table": str(table), "table_curves": len(curves), "cpu": cpu_model(), "auto": auto,
                                   "date": datetime.date.today().isoformat(), "cells": cells, "summary": summarize(cells)}))

    for budget in args.budgets:
        for strategy in ["random", *[s for s in args.strategies if s != "random"]]:
            key = f"{budget}/{strategy}"
            searches = [s for s in cells.get(key, []) if s["seed"] < args.seeds]
            done = {s["seed"] for s in searches}
            started = time.perf_counter()
            for seed in range(args.seeds):
                if seed in done:
                    continue
                experiment = replay_experiment(path, strategy, budget, seed)
                searches.append({"seed": seed, **replay_search(experiment, curves, validation_size)})
            cells[key] = sorted(searches, key=lambda s: s["seed"])
            save()
            print(f"{key}: {args.seeds} seeds in {time.perf_counter() - started:.1f} s", flush=True)
    print_table(summarize(cells))


if __name__ == "__main__":
    main()
