"""Learning curves for the replay benchmark: configurations of a search space trained to the end, every epoch recorded.

    python benchmarks/curves.py [--task digits] [--configurations 64] [--second-seed-every 4] [--processes 2]
        [--work DIR] [--out results/curves_digits.jsonl] [--stop-file curves.stop]

A replayed search (`replay.py`) runs carclf's own searcher and scheduler on these tables instead of
training, so hundreds of searches cost seconds each. What it needs of every configuration is what a
live trial would have reported at every epoch, plus what no trial may see: the test accuracy of the
model at that epoch, so that a replayed search's chosen configuration can be scored on test.

- **The configurations**: configuration 0 is the task's `[[search.start]]` point (every search
  starts there); configurations 1, 2, ... are a scrambled Sobol sequence (Optuna's `QMCSampler`,
  seed 0) over the task's `[search.space]`, so a partial table already covers the space evenly.
- **The training** is a trial's, without Ray: `carclf.train.TrainingRun` on the experiment's trial
  settings (`train.epochs` = `scheduler.max_epochs`, `train.seed` = the search's training seed, 0),
  epoch by epoch. `--processes` processes train at once, each on its share of the machine's CPUs
  (`carclf.runtime.configure_process`), as the task's `search.max_concurrent` trials of
  `resources.cpus_per_trial` CPUs do in a live search, so the seconds recorded are a live trial's;
  each process reuses its compiled models between configurations as a warm Ray worker does. Every `--second-seed-every`-th configuration is trained again with
  training seed 1 (its batch order, augmentation and initial weights), so a replay can draw
  between two curves of one configuration and the table measures the seed's noise.
- **Every epoch** records the validation accuracy (what the search sees), the test accuracy of the
  same model, the seconds the epoch took (training and validation, as a trial reports them), the
  images trained so far, the epoch's phase and final-phase epochs (ASHA's rungs), and divergence.
- **Resumable**: one JSON line per (configuration, seed) appended to `--out` once its training ends;
  a rerun skips what is there and says what is left. It stops before the next training while
  `--stop-file` exists. Every line names the date, the CPU and the code it trained with
  (`search_quality.code_in_use`: the `tuning` package imported, its commit, and whether it was edited).

Tasks (`search_quality.TASKS`):
- "digits": scikit-learn's digits at 32 px, random initial weights, the whole space of that benchmark;
- "demo": the demo's own experiment (`experiments/demo.toml`) on its synthetic cars, a cheaper task
  with a warm-up: the synthetic pretrained backbone, head-only epochs on cached frozen features
  (`head_epochs`, and every epoch at depth 0), then fine-tuning. Its epochs on cached features
  are scored on test through the same backbone's clean test features, as validation is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model
from search_quality import code_in_use, experiment_file, prepare_data

CONFIG_SEED = 0  # the Sobol sequence's scrambling
TASKS = ("digits", "demo")  # the tasks of `search_quality.TASKS` recorded here (see the module docstring)
TRAINING_SEEDS = (0, 1)
HERE = Path(__file__).resolve().parent


def configurations(experiment, count: int) -> list[dict]:
    """The start point, then `count - 1` points of a scrambled Sobol sequence over the space (see the module docstring)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = experiment.search.space.optuna_distributions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMCSampler is experimental; it draws the categorical batch size at random
        study = optuna.create_study(sampler=optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=CONFIG_SEED))
        points = [dict(experiment.search.start[0])] if experiment.search.start else []
        while len(points) < count:
            trial = study.ask(distributions)
            points.append(dict(trial.params))
            study.tell(trial, 0.0)
    return points[:count]


def runs_to_do(points: list[dict], second_seed_every: int) -> list[tuple[int, int]]:
    """(configuration, training seed) in training order: each configuration, then its second seed where it has one."""
    order = []
    for number in range(len(points)):
        order.append((number, TRAINING_SEEDS[0]))
        if second_seed_every and number % second_seed_every == 0:
            order.append((number, TRAINING_SEEDS[1]))
    return order


def head_features(dataset, settings):
    """The cached frozen features a trial trains its head-only epochs on, as a live search builds them once per
    training seed (None without a pretrained backbone)."""
    from carclf.features import build_head_features, can_cache_features

    return build_head_features(dataset.index, dataset.store, settings) if can_cache_features(settings) else None


def features_of_test(dataset, settings):
    """The test images' clean features through the pretrained backbone, on which a head trained on cached features
    is scored, as it is on validation's (None without a pretrained backbone)."""
    from carclf.data.store import open_image_store
    from carclf.data.table import rows_for
    from carclf.features import can_cache_features, extract
    from carclf.model import build_feature_extractor
    from carclf.runtime import resolve_precision

    if not can_cache_features(settings):
        return None
    extractor = build_feature_extractor(settings.data, settings.model, resolve_precision(settings.train.precision))
    return extract(extractor, open_image_store(dataset.store, settings.data.image_size), rows_for(dataset.index, "test"))


def train_curve(experiment, dataset, models, params: dict, seed: int, threads: int, tested_features=None) -> dict:
    """One configuration trained to `max_epochs` with one training seed; its every epoch (see the module docstring).
    `tested_features`: `features_of_test`, for the epochs a head trains on cached features."""
    import numpy as np

    from carclf.data.table import rows_for
    from carclf.phases import final_phase_epochs
    from carclf.runtime import configure_process
    from carclf.train import TrainingData, TrainingRun

    settings = experiment.trial_settings().with_hyperparameters(params).with_train(seed=seed)
    configure_process(threads, seed)
    run = TrainingRun(TrainingData(dataset.index, dataset.store, head_features(dataset, settings)), settings, workers=1,
                      models=models)
    test = rows_for(dataset.index, "test")
    test_rows, test_labels = test["store_row"].to_numpy(dtype=np.int64), test["label"].to_numpy()
    epochs = []
    while not run.finished:
        logs = run.train_epoch()
        tested = accuracy_on_test(run, test_rows, test_labels, tested_features)
        epochs.append({"epoch": run.epoch, "phase": run.current.phase.name,
                       "final_phase_epochs": final_phase_epochs(settings.train, run.epoch),
                       "val_accuracy": _finite(logs.get("val_accuracy")), "test_accuracy": _finite(tested),
                       "seconds": round(float(logs["seconds_per_epoch"]), 3), "images_seen": int(logs["images_seen"]),
                       "diverged": bool(logs.get("diverged"))})
    return {"epochs": epochs, "validation_size": int(len(run.validation_rows)), "test_size": int(len(test))}


def accuracy_on_test(run, test_rows, test_labels, tested_features) -> float:
    """The accuracy on test of `run`'s model now: the network's on the test images' store rows or, while the head
    trains alone on cached features (no network yet), the head's on `tested_features`, as validation is scored."""
    import numpy as np

    from carclf.evaluate import classification_metrics, predict_rows
    from carclf.train import EVALUATION_BATCH

    images, rows = (tested_features, np.arange(len(test_rows))) if run.classifier is None else (run.pixels, test_rows)
    return classification_metrics(predict_rows(run.final_model, images, rows, EVALUATION_BATCH), test_labels)["accuracy"]


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def read_table(path: Path) -> list[dict]:
    """The lines recorded so far (a line cut short by a kill is ignored, and trained again)."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits", choices=TASKS)
    parser.add_argument("--configurations", type=int, default=64, help="configurations to train (the start point included)")
    parser.add_argument("--second-seed-every", type=int, default=4, help="train every N-th configuration with seed 1 too (0: never)")
    parser.add_argument("--work", default="curves_work", help="the task's data and experiment file (persistent)")
    parser.add_argument("--out", help="the table (default: results/curves_<task>.jsonl beside this script)")
    parser.add_argument("--stop-file", default="curves.stop", help="train nothing more while this file exists")
    parser.add_argument("--processes", type=int, default=2, help="processes training at once, sharing the CPUs (default 2)")
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # K/N: a child process's share of the list (set by the parent)
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else HERE / "results" / f"curves_{args.task}.jsonl"

    from carclf.compiled_models import CompiledModels
    from carclf.data.sources import prepare_dataset
    from carclf.runtime import configure_process
    from carclf.weights import resolve_weights
    from tuning.experiment import load_experiment

    root = prepare_data(work, args.task)
    experiment = load_experiment(experiment_file(work, args.task), [f"data.root={str(root)!r}",
                                                                    f"data.cache_dir={str(work / 'cache')!r}"])
    experiment = experiment.with_settings(resolve_weights(experiment.settings))  # a pretrained backbone, built once
    points = configurations(experiment, args.configurations)
    done = {(line["configuration"], line["seed"]) for line in read_table(out) if line.get("task") == args.task}
    todo = [key for key in runs_to_do(points, args.second_seed_every) if key not in done]
    print(f"{out}: {len(done)} curves recorded, {len(todo)} to train ({args.configurations} configurations, "
          f"every {args.second_seed_every}-th with a second seed)", flush=True)
    if not todo:
        return
    dataset = prepare_dataset(experiment.settings.data)  # decoded and cached once, before any child reads it
    if args.shard is None:  # and the head features, once per training seed
        for seed in TRAINING_SEEDS:
            head_features(dataset, experiment.trial_settings().with_train(seed=seed))
    if args.shard is None and args.processes > 1:
        children = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--shard", f"{k}/{args.processes}"])
                    for k in range(args.processes)]
        sys.exit(max(child.wait() for child in children))
    shard, shards = (int(part) for part in (args.shard or "0/1").split("/"))
    todo, threads = todo[shard::shards], max(1, (os.cpu_count() or 1) // shards)
    models, cpu, code = CompiledModels(), cpu_model(), code_in_use()
    configure_process(threads, TRAINING_SEEDS[0])  # before this process's first Keras op
    tested_features = features_of_test(dataset, experiment.trial_settings())
    for position, (number, seed) in enumerate(todo):
        if Path(args.stop_file).exists():
            print(f"{args.stop_file} exists: stopping with {len(todo) - position} curves left", flush=True)
            return
        started = time.time()
        curve = train_curve(experiment, dataset, models, points[number], seed, threads, tested_features)
        line = {"task": args.task, "configuration": number, "seed": seed, "params": points[number], **curve,
                "threads": threads, "processes": shards,
                "wall_s": round(time.time() - started, 1), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "cpu": cpu, "code": code}
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        best = max((epoch["val_accuracy"] or 0.0) for epoch in curve["epochs"])
        print(f"configuration {number} seed {seed}: best validation {best:.3f}, last test "
              f"{curve['epochs'][-1]['test_accuracy']}, {line['wall_s']} s; {len(todo) - position - 1} left", flush=True)


if __name__ == "__main__":
    main()
