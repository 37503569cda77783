"""One training run: the classifier trained epoch by epoch with Keras' `fit`, in one or two phases.

The phases follow Keras' transfer-learning guide (`carclf.phases`: the head alone, then the top
blocks unfrozen). Head epochs train on cached frozen features when a run has them
(`carclf.features`: a trial on the training split, a retraining on train + validation), through
the frozen network otherwise.

Batches come from the decoded store (`carclf.data.batches`); after every epoch the validation
rows are predicted in padded fixed-size batches and scored exactly (`carclf.evaluate`). A loss
that stops being finite ends the run after that epoch, marked `diverged`.

`python -m carclf.train --experiment FILE [--set key=value ...]` trains one configuration
without Ray, with Keras' progress bar, and saves the model with its labels and settings
(`carclf.model_folder`), so `carclf.predict` crops photos as this run cropped its training images.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m carclf.train", description="Train one configuration, without Ray.")
    parser.add_argument("--experiment", required=True, help="experiment TOML file ([data], [model] and [train] are used)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--data-dir", help="dataset root, overriding data.root")
    parser.add_argument("--output", default="model.keras",
                        help="where to save the trained model, with labels.json and config.json beside it (default: model.keras)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and argument errors answer here, before the imports below load Keras and TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from carclf.checkpoints import read_checkpoint_state, restore_checkpoint, save_checkpoint  # noqa: E402
from carclf.compiled_models import CompiledModels  # noqa: E402
from carclf.config import ConfigError, RunSettings, apply_overrides, parse_run_settings, read_toml  # noqa: E402
from carclf.data.batches import TrainingBatches, epoch_images  # noqa: E402
from carclf.data.sources import prepare_dataset  # noqa: E402
from carclf.data.store import StoreError, open_image_store  # noqa: E402
from carclf.data.table import DatasetError, class_names, rows_for  # noqa: E402
from carclf.evaluate import classification_metrics, predict_rows  # noqa: E402
from carclf.features import open_head_features  # noqa: E402
from carclf.model import (  # noqa: E402
    WeightsError,
    build_classifier,
    build_head,
    compile_classifier,
    current_learning_rate,
    layer_weights,
    set_layer_weights,
    set_optimizer_values,
    transfer_weights,
)
from carclf.model_folder import ModelFolder, ModelFolderError  # noqa: E402
from carclf.phases import Phase, phase_at, plan_phases  # noqa: E402
from carclf.runtime import configure_process, resolve_precision  # noqa: E402
from carclf.weights import resolve_weights  # noqa: E402

logger = logging.getLogger(__name__)
EVALUATION_BATCH = 128


@dataclass(frozen=True)
class TrainingData:
    """What a run reads: the dataset table, the decoded store, and cached head features if any."""

    index: pd.DataFrame
    store: Path
    features: Path | None = None


# What every epoch reports, beside Keras' own training `loss`, `accuracy` and `top5_accuracy`.
EPOCH_KEYS = ("val_loss", "val_accuracy", "val_top5_accuracy", "learning_rate", "train_seconds", "eval_seconds",
              "seconds_per_epoch", "images_per_second", "images_seen", "diverged")


class EndOfEpoch(keras.callbacks.Callback):
    """The end of an epoch as one step: exact validation metrics, timing, images seen and divergence
    (`EPOCH_KEYS`), added to the epoch's logs before any later callback sees them. A run whose loss
    is no longer finite stops after that epoch."""

    def __init__(self, predict: Callable[[keras.Model], np.ndarray] | None, labels: np.ndarray, images_per_epoch: int):
        super().__init__()
        self.predict, self.labels, self.images_per_epoch = predict, labels, images_per_epoch
        self.logs: dict[str, float] = {}
        self.epoch_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        trained = time.perf_counter()
        if self.predict is not None:
            metrics = classification_metrics(self.predict(self.model), self.labels)
            logs.update({f"val_{name}": value for name, value in metrics.items()})
        done = time.perf_counter()
        diverged = not all(math.isfinite(float(logs[key])) for key in ("loss", "val_loss") if key in logs)
        logs.update({"learning_rate": current_learning_rate(self.model), "train_seconds": trained - self.epoch_started,
                     "eval_seconds": done - trained, "seconds_per_epoch": done - self.epoch_started,
                     "images_per_second": self.images_per_epoch / (done - self.epoch_started),
                     "images_seen": (epoch + 1) * self.images_per_epoch, "diverged": float(diverged)})
        self.logs = dict(logs)
        if diverged:
            logger.warning("epoch %d: the loss is not finite; stopping this run (diverged)", epoch + 1)
            self.model.stop_training = True


@dataclass
class PhaseModel:
    """The model that trains one phase, with its batches and its end-of-epoch step."""

    phase: Phase
    model: keras.Model
    batches: TrainingBatches
    end_of_epoch: EndOfEpoch
    reused: bool  # compiled by an earlier run in this process (`carclf.compiled_models`)


class TrainingRun:
    """One training run, one epoch at a time: `train_epoch()` until `finished`, then `final_model`.

    The run resolves its inputs once: the precision, the open store (or the `pixels` a caller already
    opened), the rows and the head features. Each phase's model comes from `models`, a process's
    compiled models (`carclf.compiled_models`), so a later run of the same shape compiles nothing.
    `restore(folder)` continues from a checkpoint (`carclf.checkpoints`) at its next epoch.
    """

    def __init__(self, data: TrainingData, settings: RunSettings, *, splits: Sequence[str] = ("train",), validate: bool = True,
                 workers: int = 1, models: CompiledModels | None = None, pixels: np.ndarray | None = None):
        self.settings, self.train, self.validate, self.workers = settings, settings.train, validate, workers
        self.names = class_names(data.index)
        self.precision = resolve_precision(self.train.precision)
        self.pixels = pixels if pixels is not None else open_image_store(data.store, settings.data.image_size)
        self.train_rows = rows_for(data.index, *splits)
        self.validation_rows = rows_for(data.index, "val") if validate else self.train_rows.iloc[:0]
        self.images_per_epoch = self.train.epoch_images or epoch_images(len(self.train_rows), [self.train.batch_size])
        self.splits = tuple(splits)
        use_features = data.features and self.splits in (("train",), ("train", "val"))
        self.features = open_head_features(data.features) if use_features else None
        self.models = models if models is not None else CompiledModels()
        self.phases = plan_phases(self.train)
        self.epoch = 0  # epochs done
        self.diverged = False
        self.current: PhaseModel | None = None
        self.classifier: keras.Model | None = None  # the last network model trained, when any phase trained one

    @property
    def finished(self) -> bool:
        return self.diverged or self.epoch >= self.train.epochs

    @property
    def final_model(self) -> keras.Model:
        """The classifier, or the head alone when every epoch trained on cached features."""
        return self.classifier if self.classifier is not None else self.current.model

    @property
    def whole_classifier(self) -> keras.Model:
        """The classifier; when every epoch trained on cached features, a new one holding the trained head."""
        if self.classifier is not None:
            return self.classifier
        return classifier_with(layer_weights(self.current.model), len(self.names), self.settings)

    def train_epoch(self, callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int | str = 0) -> dict[str, float]:
        """Train the next epoch and return its logs: Keras' training metrics and `EPOCH_KEYS`."""
        phase = phase_at(self.phases, self.epoch + 1)
        if self.current is None or self.current.phase != phase:
            self.current = self._enter(phase)
        current = self.current
        current.batches.epoch = self.epoch
        current.model.fit(current.batches, epochs=self.epoch + 1, initial_epoch=self.epoch, verbose=verbose, shuffle=False,
                          callbacks=[current.end_of_epoch, *callbacks])
        self.epoch += 1
        self.diverged = bool(current.end_of_epoch.logs.get("diverged"))
        return current.end_of_epoch.logs

    def save(self, folder: str | Path, state: dict) -> int:
        """Checkpoint the current phase's model with `state` and the epochs done; returns the bytes written."""
        return save_checkpoint(self.current.model, folder, {**state, "epoch": self.epoch})

    def restore(self, folder: str | Path) -> dict:
        """Continue from a checkpoint: its phase's model takes the saved weights and optimizer state; returns its state."""
        state = read_checkpoint_state(folder)
        self.epoch = min(int(state["epoch"]), self.train.epochs)
        if self.epoch:
            self.current = self._enter(phase_at(self.phases, self.epoch))
            restore_checkpoint(self.current.model, folder)
        return state

    def _enter(self, phase: Phase) -> PhaseModel:
        """The model for `phase`, starting from the previous phase's weights when there was one."""
        train, data, model_config = self.train, self.settings.data, self.settings.model
        key = (phase.unfreeze_depth, len(self.names), train.seed, train.label_smoothing, self.precision, data.image_size,
               data.rotation_degrees, data.horizontal_flip, model_config)
        if phase.unfreeze_depth == 0 and self.features is not None:
            features = self.features
            model, reused = self.models.get(("head", *key), lambda: compile_classifier(
                build_head(len(self.names), model_config, train.seed), train, phase.learning_rate))
            views = features.training_views(self.splits)
            read, rows, labels = views.draw, np.arange(len(views.labels)), views.labels
            predict = lambda model: predict_rows(model, features.val, np.arange(len(features.val)), EVALUATION_BATCH)  # noqa: E731
        else:
            def build() -> keras.Model:
                classifier = build_classifier(len(self.names), data, model_config, phase.unfreeze_depth, train.seed, self.precision)
                return compile_classifier(classifier, train, phase.learning_rate)

            model, reused = self.models.get(("network", *key), build)
            pixels, validation_rows = self.pixels, self.validation_rows["store_row"].to_numpy(dtype=np.int64)
            read = lambda rows, rng: pixels[rows]  # noqa: E731
            rows, labels = self.train_rows["store_row"].to_numpy(dtype=np.int64), self.train_rows["label"].to_numpy()
            predict = lambda model: predict_rows(model, pixels, validation_rows, EVALUATION_BATCH)  # noqa: E731
            self.classifier = model
        set_optimizer_values(model, phase.learning_rate, train.lr_decay, train.momentum)
        if self.current is not None:
            transfer_weights(self.current.model, model)
        batches = TrainingBatches(read, rows, labels, train.batch_size, self.images_per_epoch, train.seed, self.epoch, self.workers)
        end_of_epoch = EndOfEpoch(predict if self.validate else None, self.validation_rows["label"].to_numpy(),
                                  batches.images_per_epoch)
        return PhaseModel(phase, model, batches, end_of_epoch, reused)


def classifier_with(weights: dict[str, list[np.ndarray]], num_classes: int, settings: RunSettings) -> keras.Model:
    """The classifier `settings` describe, compiled, with `weights` in the layers they name (a whole model's, or a head's)."""
    train = settings.train
    model = build_classifier(num_classes, settings.data, settings.model, train.unfreeze_depth, train.seed,
                             resolve_precision(train.precision))
    set_layer_weights(compile_classifier(model, train), weights)
    return model


def train_classifier(data: TrainingData, settings: RunSettings, *, splits: Sequence[str] = ("train",), validate: bool = True,
                     callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int | str = 0, workers: int = 1) -> keras.Model:
    """Train on the `splits` rows for `settings.train.epochs` epochs; validate on "val" if `validate`.

    `callbacks` see every epoch's logs (ending with `EPOCH_KEYS`). Returns the classifier, or the
    head alone when every epoch trained on cached features.
    """
    run = TrainingRun(data, settings, splits=splits, validate=validate, workers=workers)
    while not run.finished:
        run.train_epoch(callbacks, verbose)
    return run.final_model


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = args.overrides + ([f"data.root={args.data_dir!r}"] if args.data_dir else [])
        document = apply_overrides(read_toml(args.experiment), overrides, args.experiment)
        settings = parse_run_settings(document, args.experiment)
        try:
            folder = ModelFolder.of_model(args.output)
        except ModelFolderError as error:
            raise ConfigError(f"--output {error}") from None
        dataset = prepare_dataset(settings.data)
        settings = resolve_weights(settings)
        configure_process(None, settings.train.seed)
        model = train_classifier(TrainingData(dataset.index, dataset.store), settings, verbose=1)
        folder.save(model, class_names(dataset.index), settings)
    except (ConfigError, DatasetError, StoreError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"saved {folder.model_file} with {folder.labels_file.name} and {folder.config_file.name} beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
