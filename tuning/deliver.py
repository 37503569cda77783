"""The model a run delivers, checked against the trial that won, and its one evaluation on the test split.

`run.retrain` chooses the model (`tuning.experiment.DELIVERIES`):
- "train+val" (the default; `true` means it): the winner's configuration retrained on train +
  validation, following its trial (`following`): the trial's seed, phases and best epoch count;
  each epoch larger by the validation images' share (train + validation over train, so every image
  is seen as often as the trial saw each training image), and the decay per step smaller by the same
  factor, so the learning rate at the end of every epoch is the trial's. Its head-only epochs train
  on the search's cached features (augmented views of both splits), as the trial's did.
- "trial": the winning trial's own model, its best epoch's weights (kept by the trial, written into
  its final checkpoint: `carclf.checkpoints.BEST_EPOCH_FILE`), trained on the training split only.
- "none" (`false`): no model and no test evaluation.

The reproduction check compares like with like: the retrained model and the trial's own model
predict the training split, clean (no augmentation), images both trained on. A retraining that
trained like its trial fits them about as well; one that falls short by more than `REPRODUCTION_Z`
paired standard errors plus `REPRODUCTION_MARGIN` took another path (training from random weights
at high rates is unstable: one retraining is one draw), and the trial's own model is delivered
instead, whose validation score the search measured. Without the trial's own model (a winner with
no final checkpoint, or one written before trials kept their best epoch) the retrained model is
delivered unchecked, and the run says so.

The first `[[search.start]]` configuration, when it is not the winner, is delivered the same way and
tested beside it: the test split's answer to "did tuning help?", as a paired difference with its
standard error (the search's own answer is on validation).

Writes the model folder `best/` (`model.keras`, `labels.json`, `config.json` with the winning
hyperparameters, through `carclf.model_folder`), then `best/metrics.json` (which model was delivered,
why, and the check) and `best/test_predictions.parquet` (plus `best/test_predictions.txt`, the
evaluation server's format, when the test split is unlabeled). Only the delivered models meet the
test split, and nothing is chosen on it. Seeded and, on a CPU, deterministic.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from carclf.checkpoints import read_best_epoch, read_checkpoint_state
from carclf.config import RunSettings
from carclf.data.batches import epoch_images
from carclf.data.store import open_image_store
from carclf.data.table import class_names, rows_for
from carclf.evaluate import NOISE_Z, evaluate, write_server_predictions
from carclf.files import atomic_path, write_json
from carclf.model_folder import ModelFolder
from carclf.runtime import configure_process
from carclf.train import EVALUATION_BATCH, TrainingData, TrainingRun, classifier_with
from tuning.run_folder import RunFolder
from tuning.trials import DeliveredTrial

logger = logging.getLogger(__name__)
REPRODUCTION_Z = NOISE_Z
REPRODUCTION_MARGIN = 0.02  # a retrained model also fits the validation images: it may fit the training split a little less


def deliver_model(index: pd.DataFrame, store: str | Path, settings: RunSettings, winner: DeliveredTrial, choice: str, folder: RunFolder,
                  metric: str, cpus: int | None = None, start: DeliveredTrial | None = None,
                  features: str | Path | None = None) -> dict[str, Any]:
    """The model `choice` names for `winner` (see the module docstring), saved in `best/` and tested; returns `metrics.json`.
    With the starting configuration's trial (`start`, when it is not the winner), the start is delivered the same way
    and tested beside the winner (`metrics["start"]`): did tuning help, on test. `features`, the search's cached head
    features, let a retraining's head epochs train on them, as its trial's did."""
    configure_process(cpus, settings.train.seed)
    names, pixels = class_names(index), open_image_store(store, settings.data.image_size)
    data = TrainingData(index, Path(store), Path(features) if features else None)
    model, trained, metrics = make_model(data, settings, winner, choice, folder, pixels)
    metrics["trial"] = winner.summary(metric)
    ModelFolder(folder.best).save(model, names, trained, hyperparameters=winner.hyperparameters)
    started = time.perf_counter()
    metrics["test"], right = evaluate_on_test(model, index, pixels, names, folder)
    metrics["evaluate_s"] = time.perf_counter() - started
    if start is not None and start.trial_id != winner.trial_id and right is not None:
        start_model, _, start_metrics = make_model(data, settings, start, choice, folder, pixels)
        metrics["start"] = {"trial": start.summary(metric), **start_metrics,
                            **against_start_on_test(right, correct(start_model, rows_for(index, "test"), pixels, names))}
    write_json(folder.metrics_file, metrics)
    return metrics


def make_model(data: TrainingData, settings: RunSettings, trial: DeliveredTrial, choice: str, folder: RunFolder,
               pixels: np.ndarray) -> tuple[keras.Model, RunSettings, dict[str, Any]]:
    """The model `choice` names for `trial`, the settings it trained with, and what to record: which model
    (`delivered`), why (`reason`), the reproduction check, and the retraining's recipe and epochs."""
    settings = settings.with_hyperparameters(trial.hyperparameters).with_train(epochs=trial.best_epoch)
    index = data.index
    names, train_rows = class_names(index), rows_for(index, "train")
    trial_model = trial_own_model(folder.ray_dir / trial.folder_name, trial.best_epoch, len(names), settings)
    facts: dict[str, Any] = {"choice": choice, "retrain_epochs": trial.best_epoch, "reproduction": None}
    if choice == "trial" and trial_model is not None:
        facts.update(delivered="trial", reason="run.retrain is 'trial': the trial's own model, at its best epoch")
        return trial_model, settings, facts
    logger.info("retraining trial %s's configuration on train + val for %d epoch(s), as its trial trained: %s",
                trial.trial_id, trial.best_epoch, trial.hyperparameters)
    history, started = EpochLog(), time.perf_counter()
    retraining = following(settings, len(train_rows), len(rows_for(index, "train", "val")))
    run = TrainingRun(data, retraining, splits=("train", "val"), validate=False, pixels=pixels)
    while not run.finished:
        run.train_epoch([history], verbose=2)
    model = run.whole_classifier
    facts.update(delivered="retrained", retrain_history=history.epochs, retrain_s=time.perf_counter() - started,
                 retrain_recipe={key: getattr(retraining.train, key) for key in ("epochs", "epoch_images", "lr_decay")})
    if trial_model is None:
        facts["reason"] = ("retrained on train + validation, unchecked: the trial's own model was not saved "
                           "(it has no final checkpoint with its best epoch)")
        return model, retraining, facts
    check = reproduction(correct(trial_model, train_rows, pixels, names), correct(model, train_rows, pixels, names))
    facts["reproduction"] = check
    if check["verdict"] == "reproduced":
        facts["reason"] = "retrained on train + validation; it trained like its trial (" + check["statement"] + ")"
        return model, retraining, facts
    facts.update(delivered="trial", reason="the retraining did not train like its trial (" + check["statement"] + "); "
                                           "the trial's own model is delivered instead")
    return trial_model, settings, facts


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) over the same images (right or wrong on each), and the standard error of that paired difference."""
    differences = a.astype(float) - b.astype(float)
    error = float(differences.std(ddof=1) / math.sqrt(len(differences))) if len(differences) > 1 else math.inf
    return float(differences.mean()), error


def against_start_on_test(winner_right: np.ndarray, start_right: np.ndarray) -> dict[str, Any]:
    """The delivered winner against the delivered start on the same test images: the difference, its paired standard
    error and the answer in plain words."""
    gain, error = paired_difference(winner_right, start_right)
    if gain > NOISE_Z * error:
        statement = f"tuning helped on test: the winner's model beats the start's by {gain:+.3f} ± {error:.3f}"
    elif gain < -NOISE_Z * error:
        statement = f"tuning did not help on test: the start's model beats the winner's by {-gain:.3f} ± {error:.3f}"
    else:
        statement = f"tuning did not beat the start on test: {gain:+.3f} ± {error:.3f}, within noise"
    return {"test_accuracy": float(start_right.mean()), "gain": gain, "standard_error": error, "statement": statement}


def following(settings: RunSettings, train_rows: int, pooled_rows: int) -> RunSettings:
    """The trial's settings scaled for a retraining on `pooled_rows` images (train + validation) where the trial had
    `train_rows`: images per epoch times pooled / train (whole batches), the decay per step divided by the same factor."""
    train = settings.train
    trial_images = train.epoch_images or epoch_images(train_rows, [train.batch_size])
    images = max(1, round(trial_images * pooled_rows / train_rows / train.batch_size)) * train.batch_size
    return settings.with_train(epoch_images=images, lr_decay=train.lr_decay * trial_images / images)


def final_checkpoint(trial_folder: Path) -> Path | None:
    """The trial's newest checkpoint folder (Ray names them `checkpoint_000003`); None without one."""
    folders = sorted(trial_folder.glob("checkpoint_*")) if trial_folder.is_dir() else []
    return folders[-1] if folders else None


def trial_own_model(trial_folder: Path, best_epoch: int, num_classes: int, settings: RunSettings) -> keras.Model | None:
    """The trial's model at its best epoch, rebuilt from its final checkpoint; None when the checkpoint does not hold it."""
    checkpoint = final_checkpoint(trial_folder)
    if checkpoint is None or read_checkpoint_state(checkpoint).get("best_epoch") != best_epoch:
        return None
    weights = read_best_epoch(checkpoint)
    return None if weights is None else classifier_with(weights, num_classes, settings)


def correct(model: keras.Model, rows: pd.DataFrame, pixels: np.ndarray, names: list[str]) -> np.ndarray:
    """Whether the model gets each row right, predicted clean (no augmentation)."""
    return evaluate(model, rows, pixels, names, EVALUATION_BATCH).predicted == rows["label"].to_numpy(dtype=np.int64)


def reproduction(trial_right: np.ndarray, retrained_right: np.ndarray) -> dict[str, Any]:
    """The reproduction check on the same images: the accuracies, their paired difference and its standard error,
    and the verdict, "reproduced" or "departed" (see the module docstring)."""
    count = len(trial_right)
    trial, retrained = float(np.mean(trial_right)), float(np.mean(retrained_right))
    error = paired_difference(retrained_right, trial_right)[1]
    departed = retrained - trial < -(REPRODUCTION_Z * error + REPRODUCTION_MARGIN)
    statement = (f"on the {count} training images, clean: retrained {retrained:.3f} against the trial's model {trial:.3f}, "
                 f"{retrained - trial:+.3f} ± {error:.3f}")
    return {"images": count, "trial_accuracy": trial, "retrained_accuracy": retrained, "difference": retrained - trial,
            "standard_error": error, "verdict": "departed" if departed else "reproduced", "statement": statement}


def evaluate_on_test(model: keras.Model, index: pd.DataFrame, pixels: np.ndarray, names: list[str],
                     folder: RunFolder) -> tuple[dict[str, Any], np.ndarray | None]:
    """The delivered model's test metrics, and whether it got each test image right (None when the split has no labels,
    or no images), for the comparison with the start; its predictions in the run folder (the server's format when
    unlabeled)."""
    test_rows = rows_for(index, "test")
    if len(test_rows) == 0:
        return {"labeled": False, "count": 0, "note": "the dataset has no test split"}, None
    evaluation = evaluate(model, test_rows, pixels, names, EVALUATION_BATCH)
    metrics = evaluation.metrics()
    predictions = pd.DataFrame({
        "path": test_rows["path"].to_numpy(),
        "label": test_rows["label"].to_numpy(),
        "predicted": evaluation.predicted,
        "confidence": evaluation.probabilities.max(axis=1),
    })
    with atomic_path(folder.predictions_file) as partial:
        predictions.to_parquet(partial, index=False)
    if evaluation.labels is None:
        write_server_predictions(evaluation, folder.server_predictions_file)
        metrics["note"] = "the test split is unlabeled: no accuracy computed; predictions in test_predictions.txt"
        return metrics, None
    metrics["confusion_matrix"] = evaluation.confusion().tolist()
    return metrics, evaluation.predicted == evaluation.labels


class EpochLog(keras.callbacks.Callback):
    """Collects each epoch's logs as plain floats, for `metrics.json`."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}})
