"""The Ray Tune function trainable: `carclf.train.fit` reported to Tune every epoch.

This is the only module of `carclf` that knows Ray. Each epoch it calls `tune.report` with the
epoch's metrics and a checkpoint (the `.keras` model, which holds the weights and the optimizer
state, and the epoch), so ASHA, retried failures and `--resume` continue from the last epoch.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import keras
import pandas as pd
import ray
from ray import tune

from carclf.config import RunSettings
from carclf.data.table import class_names
from carclf.features import fit_head, load_head_features
from carclf.model import build_head, compile_classifier
from carclf.files import read_json, write_json
from carclf.runtime import configure_tensorflow
from carclf.train import build_model, fit, save_model

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


class ReportToTune(keras.callbacks.Callback):
    """Reports each epoch's logs and a checkpoint to Ray Tune."""

    def on_epoch_end(self, epoch, logs=None):
        metrics: dict[str, Any] = {"epoch": epoch + 1, "node_id": ray.get_runtime_context().get_node_id()}
        for key, value in (logs or {}).items():
            value = float(value)
            metrics[key] = value if math.isfinite(value) else None
        with tempfile.TemporaryDirectory() as folder:
            save_model(self.model, Path(folder) / MODEL_FILE)
            write_json(Path(folder) / STATE_FILE, {"epoch": epoch + 1})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def restore_from_checkpoint(checkpoint: tune.Checkpoint) -> tuple[keras.Model, int]:
    """The model (with its optimizer state) and the number of epochs already trained."""
    with checkpoint.as_directory() as folder:
        model = keras.models.load_model(Path(folder) / MODEL_FILE)
        epochs_done = read_json(Path(folder) / STATE_FILE)["epoch"]
    return model, epochs_done


def assigned_cpus() -> int | None:
    """The CPUs Ray reserved for this trial (None outside Ray)."""
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


def train_car_classifier(config: dict[str, Any], index: pd.DataFrame, settings: RunSettings, image_store: str | None = None,
                         head_features: str | None = None) -> None:
    """Train one trial: `config` holds the sampled hyperparameters, `settings` everything else.

    `index` (the dataset table), `settings`, `image_store` (the decoded pixels, see
    `carclf.data.store`) and `head_features` (cached frozen features, see `carclf.features`)
    arrive through `tune.with_parameters`, so the table travels once through Ray's object store
    instead of being re-read by every trial. Head-only trials train on the cached features.
    """
    settings = settings.with_hyperparameters(config)
    configure_tensorflow(assigned_cpus(), settings.train.seed)
    features = load_head_features(head_features) if head_features and settings.train.unfreeze_depth == 0 else None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        model, epochs_done = restore_from_checkpoint(checkpoint)
    elif features is not None:
        head = build_head(len(class_names(index)), features["train"].shape[-1], settings.model)
        model, epochs_done = compile_classifier(head, settings.train), 0
    else:
        model, epochs_done = build_model(len(class_names(index)), settings), 0
    if epochs_done >= settings.train.epochs:
        return
    if features is not None:
        fit_head(model, features, settings, initial_epoch=epochs_done, callbacks=[ReportToTune()])
    else:
        fit(model, index, settings, initial_epoch=epochs_done, callbacks=[ReportToTune()], image_store=image_store)
