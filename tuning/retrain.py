"""Retrain the best configuration on train + validation, evaluate it once on the test split.

Writes the model folder `best/` (`model.keras`, `labels.json` and `config.json` with the winning
hyperparameters, through `carclf.model_folder`), then `best/metrics.json` and
`best/test_predictions.parquet` (plus `best/test_predictions.txt`, the evaluation server's format,
when the test split is unlabeled). This is the only place the test split is used. The run is
seeded and, on a CPU, deterministic: the same winner retrains to the same test metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from carclf.config import RunSettings
from carclf.data.store import open_image_store
from carclf.data.table import class_names, rows_for
from carclf.evaluate import evaluate, write_server_predictions
from carclf.files import atomic_path, write_json
from carclf.model_folder import ModelFolder
from carclf.runtime import configure_process
from carclf.train import EVALUATION_BATCH, TrainingData, train_classifier
from tuning.run_folder import RunFolder

logger = logging.getLogger(__name__)


def retrain_and_evaluate(index: pd.DataFrame, store: str | Path, settings: RunSettings, best_config: dict[str, Any], epochs: int,
                         folder: RunFolder, cpus: int | None = None) -> dict[str, Any]:
    """Train `best_config` for `epochs` on train + val, save it in the run folder's `best/`, return the test metrics."""
    settings = settings.with_hyperparameters(best_config).with_train(epochs=epochs, epoch_images=0)
    configure_process(cpus, settings.train.seed)
    names = class_names(index)
    logger.info("retraining the best configuration on train + val for %d epoch(s): %s", epochs, best_config)
    history = EpochLog()
    started = time.perf_counter()
    model = train_classifier(TrainingData(index, Path(store)), settings, splits=("train", "val"), validate=False, verbose=2,
                             callbacks=[history])
    ModelFolder(folder.best).save(model, names, settings, hyperparameters=best_config)

    test_rows = rows_for(index, "test")
    metrics: dict[str, Any] = {"retrain_epochs": epochs, "retrain_history": history.epochs, "retrain_s": time.perf_counter() - started}
    started = time.perf_counter()
    if len(test_rows) == 0:
        metrics["test"] = {"labeled": False, "count": 0, "note": "the dataset has no test split"}
    else:
        pixels = open_image_store(store, settings.data.image_size)
        evaluation = evaluate(model, test_rows, pixels, names, EVALUATION_BATCH)
        metrics["test"] = evaluation.metrics()
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
            metrics["test"]["note"] = "the test split is unlabeled: no accuracy computed; predictions in test_predictions.txt"
        else:
            metrics["test"]["confusion_matrix"] = evaluation.confusion().tolist()
    metrics["evaluate_s"] = time.perf_counter() - started
    write_json(folder.metrics_file, metrics)
    return metrics


class EpochLog(keras.callbacks.Callback):
    """Collects each epoch's logs as plain floats, for `metrics.json`."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}})
