"""The Ray Tune function trainable: `carclf.train.train_classifier` reported to Tune every epoch.

This is the only module of `carclf` that knows Ray. Every epoch it reports the epoch's metrics and
the trial's objective, `best_<metric>`: the best value of the search metric over the epochs so far
(the first epoch that reached it is `best_epoch`). ASHA, Optuna, the ranking of trials and the
number of epochs the winner is retrained for all read that one rule. A diverged epoch (the loss
no longer finite) ends the trial and reports the worst possible objective.

Checkpoints are light (`carclf.checkpoints`) and rare: at the trial's last epoch and at most every
`checkpoint_minutes`; they serve `--resume` and retried failures.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import pandas as pd
import ray
from ray import tune

from carclf.checkpoints import read_checkpoint_state, save_checkpoint
from carclf.config import RunSettings
from carclf.runtime import configure_process, resolve_precision
from carclf.train import TrainingData, final_phase_epochs, phase_of, train_classifier

OUT_OF_MEMORY_SIGNS = ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating")


@dataclass(frozen=True)
class Selection:
    """The search metric and direction; `objective` is the name trials report their best value under."""

    metric: str = "val_accuracy"
    mode: str = "max"

    @property
    def objective(self) -> str:
        return f"best_{self.metric}"

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)


class ReportToTune(keras.callbacks.Callback):
    """Reports each epoch's logs, the objective and (when due) a light checkpoint to Ray Tune."""

    def __init__(self, settings: RunSettings, selection: Selection, precision: str, checkpoint_minutes: float,
                 restored: dict[str, Any] | None = None):
        super().__init__()
        self.settings, self.selection, self.precision = settings, selection, precision
        self.checkpoint_seconds = checkpoint_minutes * 60
        self.best = (restored or {}).get("best")
        self.best_epoch = (restored or {}).get("best_epoch", 0)
        self._last_checkpoint = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs, number = dict(logs or {}), epoch + 1
        value = float(logs.get(self.selection.metric, math.nan))
        if self.selection.improves(value, self.best):
            self.best, self.best_epoch = value, number
        diverged = bool(logs.pop("diverged", 0.0))
        metrics: dict[str, Any] = {key: (float(v) if math.isfinite(float(v)) else None) for key, v in logs.items()}
        metrics.update({
            "epoch": number, "phase": phase_of(self.settings.train, number), "precision": self.precision,
            "final_phase_epochs": final_phase_epochs(self.settings.train, number),
            "diverged": diverged, "best_epoch": self.best_epoch,
            self.selection.objective: self.selection.worst if diverged or self.best is None else self.best,
            "node_id": ray.get_runtime_context().get_node_id(),
        })
        due = number == self.settings.train.epochs or time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds
        if not due or diverged:
            tune.report(metrics)
            return
        state = {"epoch": number, "phase": metrics["phase"], "best": self.best, "best_epoch": self.best_epoch}
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            metrics["checkpoint_bytes"] = save_checkpoint(self.model, folder, state)
            metrics["checkpoint_seconds"] = time.perf_counter() - started
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        self._last_checkpoint = time.monotonic()


def assigned_resources() -> tuple[int | None, float]:
    """The CPUs and the share of a GPU Ray reserved for this trial ((None, 1.0) outside Ray)."""
    if not ray.is_initialized():
        return None, 1.0
    resources = ray.get_runtime_context().get_assigned_resources()
    cpus = max(1, int(resources["CPU"])) if resources.get("CPU") else None
    gpus = resources.get("GPU", 0.0)
    return cpus, gpus if 0 < gpus < 1 else 1.0


def train_car_classifier(config: dict[str, Any], index: pd.DataFrame, settings: RunSettings, store: str,
                         features: str | None = None, selection: Selection = Selection(), checkpoint_minutes: float = 10.0) -> None:
    """Train one trial: `config` holds the sampled hyperparameters, `settings` everything else.

    `index` (the dataset table), `settings` (with `model.weights` already a file), `store` (the
    decoded pixels) and `features` (cached frozen features, or None) arrive through
    `tune.with_parameters`, so the table travels once through Ray's object store.
    """
    settings = settings.with_hyperparameters(config)
    cpus, gpu_share = assigned_resources()
    configure_process(cpus, settings.train.seed, gpu_share)
    precision = resolve_precision(settings.train.precision)
    data = TrainingData(index, Path(store), Path(features) if features else None)
    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory() as folder:
        restored = None
        if checkpoint is not None:
            checkpoint.to_directory(folder)
            restored = read_checkpoint_state(folder)
            if restored["epoch"] >= settings.train.epochs:
                return
        reporter = ReportToTune(settings, selection, precision, checkpoint_minutes, restored)
        try:
            train_classifier(data, settings, callbacks=[reporter], resume=Path(folder) if restored else None,
                             workers=max(1, min(4, (cpus or 2) - 1)))
        except Exception as error:
            if any(sign in str(error) for sign in OUT_OF_MEMORY_SIGNS):
                raise MemoryError(
                    f"out of GPU memory training batch size {settings.train.batch_size} at {settings.data.image_size} px "
                    f"with {gpu_share:.2g} of the GPU ({precision}); lower the batch size or raise resources.gpus_per_trial"
                ) from None
            raise
