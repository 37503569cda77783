"""Is the delivered model as good as the trial that won? The winner's own model against its retrainings, over searches.

    python benchmarks/delivery.py [--task demo|digits] [--seeds 0 1 2 3 4] [--work DIR] [--out FILE]

For each seed, one real search (`python -m tuning.search`, `run.retrain = "none"`, `search.seed` and
`train.seed` set to the seed), then, in this process, on its winner:
- the trial's own model: its best epoch's weights, from its final checkpoint (`tuning.deliver`);
- "before": the winner retrained as carclf did before issue 30: on train + validation for its best
  epoch count, each epoch one pass over train + validation (`epoch_images = 0`: more steps per epoch,
  so the learning rate decays further);
- "same steps": retrained with the trial's own images per epoch and decay, so its optimizer steps
  at its learning rates, drawn from train + validation (each image seen less often);
- "after": retrained as `tuning.deliver` does now (`tuning.deliver.following`): epochs larger by
  train + validation over train, the decay per step smaller by as much, so every image is seen as
  often as in the trial and the learning rate at each epoch's end is the trial's;
- "continued": the trial's own model trained on from its best epoch, on train + validation, for as
  many more images as the validation split adds (the images it had seen times validation over
  train), at the learning rate it ended that epoch with, held constant: the model the search chose,
  with the validation images added, instead of a fresh draw of its configuration;
- the fixed recipe: the first `[[search.start]]` configuration trained on the training split for
  `scheduler.max_epochs` epochs, untuned;
- "delivered": what `run.retrain = "train+val"` delivers now: "after" when its reproduction check
  passes, else the trial's own model.
Each model is tested once on the test split; each retraining's reproduction check against the trial's
own model is recorded (its false alarms are departures of retrainings that test no worse than the
trial's model). Differences are paired on the same test images: the standard error of a difference
comes from the per-image differences. Prints the table and the mean difference over searches with its
95 % interval, and writes everything to `--out` (default: benchmarks/results/delivery_<task>.json).
Runs stay under `--work`; a rerun skips seeds already in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import carclf  # noqa: F401  (registers carclf's Keras objects)
from carclf.data.batches import TrainingBatches
from carclf.data.store import open_image_store
from carclf.data.table import class_names, rows_for
from carclf.model import layer_weights, set_optimizer_values
from carclf.runtime import configure_process
from carclf.train import TrainingData, classifier_with, train_classifier
from tuning.deliver import correct, following, paired_difference, reproduction, trial_own_model
from tuning.experiment import DEMO_EXPERIMENT, experiment_from_document
from tuning.prepare import prepare
from tuning.run_folder import RunFolder
from tuning.trials import Selection, best_trial

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from machine import cpu_model  # noqa: E402
from search_quality import TASKS, prepare_data  # noqa: E402


def search(work: Path, task: str, seed: int) -> RunFolder:
    """One search of `task` with `seed`, no model delivered; its run folder (reused when it finished before)."""
    folder = RunFolder(work / "runs" / f"delivery-{task}-s{seed}")
    if (folder.path / "status.json").is_file() and json.loads((folder.path / "status.json").read_text()).get("stage") == "finished":
        return folder
    if task == "demo":  # the demo's data and backbone in the user's cache, as a user's demo run has them
        data = ["--experiment", str(DEMO_EXPERIMENT)]
    else:
        file = work / f"{task}.toml"
        file.write_text(TASKS[task]["experiment"])
        data = ["--experiment", str(file), "--data-dir", str(prepare_data(work, task)), "--set", f"data.cache_dir='{work / 'cache'}'"]
    command = [sys.executable, "-m", "tuning.search", *data, "--storage-path", str(folder.path.parent), "--name", folder.path.name,
               "--no-dashboard", "--no-retrain", "--set", f"search.seed={seed}", "--set", f"train.seed={seed}"]
    started = time.time()
    with (work / f"{folder.path.name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"seed {seed}: search {time.time() - started:.0f} s", flush=True)
    return folder


def summary(right: np.ndarray) -> dict:
    accuracy = float(right.mean())
    return {"accuracy": accuracy, "standard_error": math.sqrt(accuracy * (1 - accuracy) / len(right))}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """a − b on the same images, with the standard error of the paired difference."""
    difference, error = paired_difference(a, b)
    return {"difference": difference, "standard_error": error}


def continued(trial_model, trials, winner, settings, index, pixels: np.ndarray):
    """The "continued" model (see the module docstring), from a copy of the trial's own model, and the images it trained on."""
    epoch = trials[(trials["trial_id"] == winner.trial_id) & (trials["epoch"] == winner.best_epoch)].iloc[-1]
    pooled, train_count = rows_for(index, "train", "val"), len(rows_for(index, "train"))
    batch = settings.train.batch_size
    images = max(1, round(float(epoch["images_seen"]) * (len(pooled) - train_count) / train_count / batch)) * batch
    model = classifier_with(layer_weights(trial_model), trial_model.output_shape[-1], settings)
    set_optimizer_values(model, float(epoch["learning_rate"]), 0.0, settings.train.momentum)
    batches = TrainingBatches(lambda rows, rng: pixels[rows], pooled["store_row"].to_numpy(dtype=np.int64), pooled["label"].to_numpy(),
                              batch, images, settings.train.seed)
    model.fit(batches, epochs=1, verbose=0, shuffle=False)
    return model, images


def measure(folder: RunFolder) -> dict:
    """The winner's models (see the module docstring), tested."""
    experiment = experiment_from_document(folder.read_experiment().document, str(folder.experiment_file))
    prepared = prepare(experiment, resume=True)
    index, settings = prepared.index, prepared.experiment.settings
    names, pixels = class_names(index), open_image_store(prepared.store, settings.data.image_size)
    train_rows, test_rows = rows_for(index, "train"), rows_for(index, "test")
    selection = Selection.of(experiment.search)
    trials = folder.read_trials()
    winner = best_trial(trials, selection, list(experiment.search.space))
    trial_settings = settings.with_hyperparameters(winner.hyperparameters).with_train(epochs=winner.best_epoch)
    configure_process(None, trial_settings.train.seed)
    data = TrainingData(index, prepared.store)
    models = {"trial": trial_own_model(folder.ray_dir / winner.folder_name, winner.best_epoch, len(names), trial_settings)}
    if models["trial"] is None:
        raise SystemExit(f"{folder.path}: the winner {winner.trial_id} has no final checkpoint with its best epoch")
    seconds = {}
    recipes = {"before": trial_settings.with_train(epoch_images=0), "same steps": trial_settings,
               "after": following(trial_settings, len(train_rows), len(rows_for(index, "train", "val")))}
    for name, recipe in recipes.items():
        started = time.time()
        models[name] = train_classifier(data, recipe, splits=("train", "val"), validate=False)
        seconds[name] = time.time() - started
    started = time.time()
    models["continued"], continued_images = continued(models["trial"], trials, winner, trial_settings, index, pixels)
    seconds["continued"] = time.time() - started
    start = settings.with_hyperparameters(experiment.search.start[0]).with_train(epochs=experiment.scheduler.max_epochs)
    models["fixed recipe"] = train_classifier(data, start, splits=("train",), validate=False)
    right = {name: correct(model, test_rows, pixels, names) for name, model in models.items()}
    candidates = (*recipes, "continued")
    on_train = {name: correct(models[name], train_rows, pixels, names) for name in ("trial", *candidates)}
    checks = {name: reproduction(on_train["trial"], on_train[name]) for name in candidates}
    right["delivered"] = right["after"] if checks["after"]["verdict"] == "reproduced" else right["trial"]
    return {
        "winner": {"trial_id": winner.trial_id, "validation": winner.score, "best_epoch": winner.best_epoch, **winner.hyperparameters},
        "test_images": len(test_rows), "retrain_s": seconds, "continued_images": continued_images,
        "test": {name: summary(values) for name, values in right.items()},
        "minus_trial": {name: paired(right[name], right["trial"]) for name in (*candidates, "delivered")},
        "minus_fixed_recipe": {name: paired(right[name], right["fixed recipe"]) for name in ("trial", "continued", "delivered")},
        "checks": {name: {key: check[key] for key in ("trial_accuracy", "retrained_accuracy", "difference", "standard_error", "verdict")}
                   for name, check in checks.items()},
    }


def interval(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:+.3f}"
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return f"{mean:+.3f} (95 % interval {mean - half:+.3f} to {mean + half:+.3f})"


def report(results: dict) -> None:
    columns = ("trial", "before", "same steps", "after", "continued", "delivered", "fixed recipe")
    print(f"{'seed':>4} {'val':>6} " + " ".join(f"{name[:6]:>6}" for name in columns) + "  checks")
    for seed, run in sorted(results["runs"].items(), key=lambda item: int(item[0])):
        test = run["test"]
        print(f"{seed:>4} {run['winner']['validation']:6.3f} " + " ".join(f"{test[n]['accuracy']:6.3f}" if n in test else f"{'':>6}" for n in columns)
              + "  " + "/".join(check["verdict"] for check in run["checks"].values()))
    runs = list(results["runs"].values())
    for name in ("before", "same steps", "after", "continued", "delivered"):
        differences = [run["minus_trial"][name]["difference"] for run in runs if name in run["minus_trial"]]
        if differences:
            print(f"{name} minus the trial's own model: {interval(differences)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", "digits"], default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=Path("delivery_runs"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or HERE / "results" / f"delivery_{args.task}.json"
    results = json.loads(out.read_text()) if out.is_file() else {"task": args.task, "runs": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if str(seed) in results["runs"]:
            continue
        results["runs"][str(seed)] = measure(search(args.work.resolve(), args.task, seed))
        results.update(date=time.strftime("%Y-%m-%d"), cpu=cpu_model())
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"seed {seed}: {results['runs'][str(seed)]['test']}", flush=True)
    report(results)


if __name__ == "__main__":
    main()
