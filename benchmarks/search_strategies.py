"""The demo search, measured side by side in one run, four ways on the same data and seeds.

1. before: the demo with this project's speed-ups off (`data.decode_once=false`,
   `train.feature_views=0`): every trial decodes JPEGs, head-only trials run the backbone.
2. after: the demo as shipped (decoded store, cached features for head-only trials).
3. random search with no early stopping (`search.algorithm="random"`, `scheduler.kind="none"`),
   the same number of trials and seed, to show what Optuna + ASHA buy.
4. Keras Tuner's Hyperband (a benchmark-only dependency: `pip install keras-tuner`) over the
   same space, model and epoch budget, sequentially in this process.

Prints the whole command's wall time, the search's own time (indexing to the last trial, no
retraining), total epochs trained and best validation accuracy for each.

    python benchmarks/search_strategies.py [--skip-keras-tuner]
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEMO_FLAGS = ["--num-cpus", "2"]


def run_search(storage: Path, name: str, *overrides: str) -> dict:
    command = [sys.executable, "-m", "tuning.search", *DEMO_FLAGS, "--storage-path", str(storage), "--name", name]
    command += [flag for value in overrides for flag in ("--set", value)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    print(f"{name}: {wall:.0f} s", flush=True)
    trials = pd.read_parquet(storage / name / "trials.parquet")
    per_trial = trials.groupby("trial_id")
    search_s = json.loads((storage / name / "search.json").read_text())["wall_time_s"]
    return {"wall_s": wall, "search_s": search_s, "trials": per_trial.ngroups, "epochs": int(per_trial["epoch"].max().sum()),
            "best_val_accuracy": float(trials["val_accuracy"].max())}


def run_keras_tuner(work: Path) -> dict:
    try:
        import keras_tuner
    except ImportError:
        raise SystemExit("Keras Tuner is a benchmark-only dependency: pip install keras-tuner (or pass --skip-keras-tuner)")
    from carclf.data.pipeline import make_dataset
    from carclf.data.sources import index_dataset
    from carclf.data.splits import rows_for
    from carclf.data.table import class_names
    from carclf.train import build_model
    from tuning.experiment import load_experiment

    experiment = load_experiment()
    settings = experiment.trial_settings()
    index = index_dataset(settings.data)
    names = class_names(index)

    class CarHyperModel(keras_tuner.HyperModel):
        def build(self, hp):
            values = {"batch_size": hp.Choice("batch_size", [16, 32]),
                      "learning_rate": hp.Float("learning_rate", 0.001, 0.1, sampling="log"),
                      "lr_decay": hp.Float("lr_decay", 0.00001, 0.001, sampling="log"),
                      "unfreeze_depth": hp.Int("unfreeze_depth", 0, 16)}
            return build_model(len(names), settings.with_hyperparameters(values))

        def fit(self, hp, model, *args, **kwargs):
            batch = hp.get("batch_size")
            train = make_dataset(rows_for(index, "train"), settings.data, batch, training=True)
            validation = make_dataset(rows_for(index, "val"), settings.data, batch, training=False)
            return model.fit(train, validation_data=validation, verbose=0, **kwargs)

    tuner = keras_tuner.Hyperband(CarHyperModel(), objective="val_accuracy", max_epochs=experiment.scheduler.max_epochs,
                                  factor=2, seed=experiment.search.seed, directory=str(work), project_name="hyperband")
    started = time.perf_counter()
    tuner.search()
    wall = time.perf_counter() - started
    trials = tuner.oracle.trials.values()
    epochs = sum(t.hyperparameters.values.get("tuner/epochs", 0) - t.hyperparameters.values.get("tuner/initial_epoch", 0) for t in trials)
    best = max((t.score for t in trials if t.score is not None), default=float("nan"))
    return {"wall_s": wall, "search_s": wall, "trials": len(trials), "epochs": int(epochs), "best_val_accuracy": float(best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-keras-tuner", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carclf-search-bench-"))
    rows = {
        "before (no store, no cached features)": run_search(work, "before", "data.decode_once=false", "train.feature_views=0"),
        "after (store + cached features)": run_search(work, "after"),
        "random search, no early stopping": run_search(work, "random", "search.algorithm='random'", "scheduler.kind='none'", "run.retrain=false"),
    }
    if not args.skip_keras_tuner:
        rows["Keras Tuner Hyperband (sequential, search only)"] = run_keras_tuner(work)
    table = pd.DataFrame(rows).T
    with pd.option_context("display.width", 140, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    before, after = rows["before (no store, no cached features)"], rows["after (store + cached features)"]
    print(f"demo wall time after / before: {after['wall_s'] / before['wall_s']:.2f}")
    random = rows["random search, no early stopping"]
    print(f"Optuna + ASHA vs random without early stopping: {after['epochs']} vs {random['epochs']} epochs "
          f"({after['epochs'] / random['epochs']:.2f}), search time {after['search_s']:.0f} s vs {random['search_s']:.0f} s, best val accuracy {after['best_val_accuracy']:.3f} vs {random['best_val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
