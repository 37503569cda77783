"""One training run: the classifier trained epoch by epoch with Keras' `fit`, in one or two phases.

The phases follow Keras' transfer-learning guide. With `head_epochs` > 0 (and some blocks to
unfreeze) the head trains alone first, then the top `unfreeze_depth` blocks are unfrozen and
training goes on at `learning_rate * fine_tune_lr_scale`. With depth 0 every epoch is a head
epoch; with `head_epochs` 0 the blocks train from the first epoch. Head epochs train on cached
frozen features when a trial has them (`carclf.features`), through the frozen network otherwise.

Batches come from the decoded store (`carclf.data.batches`); after every epoch the validation
rows are predicted in padded fixed-size batches and scored exactly (`carclf.evaluate`). A loss
that stops being finite ends the run after that epoch, marked `diverged`.

`python -m carclf.train --experiment FILE [--set key=value ...]` trains one configuration
without Ray, with Keras' progress bar, and saves the model and its labels.
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
    parser.add_argument("--output", default="model.keras", help="where to save the trained model (default: model.keras)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and argument errors answer here, before the imports below load Keras and TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from carclf.checkpoints import read_checkpoint_state, restore_checkpoint  # noqa: E402
from carclf.config import ConfigError, RunSettings, TrainConfig, apply_overrides, parse_run_settings, read_toml  # noqa: E402
from carclf.data.batches import TrainingBatches, epoch_images  # noqa: E402
from carclf.data.sources import prepare_dataset  # noqa: E402
from carclf.data.store import StoreError, open_image_store  # noqa: E402
from carclf.data.table import DatasetError, class_names, rows_for  # noqa: E402
from carclf.evaluate import classification_metrics, predict_probabilities  # noqa: E402
from carclf.features import open_head_features  # noqa: E402
from carclf.files import atomic_path, write_json  # noqa: E402
from carclf.model import (BACKBONE_NAME, WeightsError, build_classifier, build_head, compile_classifier, current_learning_rate,  # noqa: E402
                          set_unfreeze_depth, transfer_weights)
from carclf.runtime import configure_process, resolve_precision  # noqa: E402
from carclf.weights import resolve_weights  # noqa: E402

logger = logging.getLogger(__name__)
EVALUATION_BATCH = 128


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one set of trainable blocks and one learning rate."""

    name: str  # "head" (backbone frozen) or "fine_tune"
    start: int  # epochs done before the phase
    end: int  # epochs done after it
    unfreeze_depth: int
    learning_rate: float


def plan_phases(train: TrainConfig) -> list[Phase]:
    """The run's phases (see the module docstring); never empty."""
    if train.unfreeze_depth == 0:
        return [Phase("head", 0, train.epochs, 0, train.learning_rate)]
    head_end = min(train.head_epochs, train.epochs)
    phases = [Phase("head", 0, head_end, 0, train.learning_rate)] if head_end else []
    fine_tune_rate = train.learning_rate * (train.fine_tune_lr_scale if head_end else 1.0)
    if head_end < train.epochs:
        phases.append(Phase("fine_tune", head_end, train.epochs, train.unfreeze_depth, fine_tune_rate))
    return phases


def phase_of(train: TrainConfig, epoch: int) -> str:
    """The name of the phase that trains epoch `epoch` (1-based)."""
    return next(phase.name for phase in plan_phases(train) if phase.start < epoch <= phase.end)


def final_phase_epochs(train: TrainConfig, epoch: int) -> int:
    """Epochs of the run's last phase done after epoch `epoch`: 0 throughout a head-only warm-up.

    Early stopping counts its rungs in these (`tuning.scheduler`), so no trial is judged before it
    trains the way it will finish."""
    return max(0, epoch - plan_phases(train)[-1].start)


@dataclass(frozen=True)
class TrainingData:
    """What a run reads: the dataset table, the decoded store, and cached head features if any."""

    index: pd.DataFrame
    store: Path
    features: Path | None = None


class ValidationMetrics(keras.callbacks.Callback):
    """Adds exact `val_loss`, `val_accuracy` and `val_top5_accuracy` to each epoch's logs."""

    def __init__(self, predict: Callable[[keras.Model], np.ndarray], labels: np.ndarray):
        super().__init__()
        self.predict, self.labels = predict, labels

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            metrics = classification_metrics(self.predict(self.model), self.labels)
            logs.update({f"val_{name}": value for name, value in metrics.items()})


class EpochStats(keras.callbacks.Callback):
    """Adds the learning rate, timing, images seen and `diverged` to each epoch's logs; stops a
    run whose loss is no longer finite."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        seconds = time.perf_counter() - self._started
        diverged = not all(math.isfinite(float(logs[key])) for key in ("loss", "val_loss") if key in logs)
        logs.update({"learning_rate": current_learning_rate(self.model), "seconds_per_epoch": seconds,
                     "images_per_second": self.images_per_epoch / seconds,
                     "images_seen": (epoch + 1) * self.images_per_epoch, "diverged": float(diverged)})
        if diverged:
            logger.warning("epoch %d: the loss is not finite; stopping this run (diverged)", epoch + 1)
            self.model.stop_training = True


def train_classifier(data: TrainingData, settings: RunSettings, *, splits: Sequence[str] = ("train",), validate: bool = True,
                     callbacks: Sequence[keras.callbacks.Callback] = (), resume: Path | None = None, verbose: int | str = 0,
                     workers: int = 1) -> keras.Model:
    """Train on the `splits` rows for `settings.train.epochs` epochs; validate on "val" if `validate`.

    `resume` is a checkpoint folder (`carclf.checkpoints`): training restores it and goes on at the
    next epoch. `callbacks` see every epoch's logs (ending with the run's own keys). Returns the
    classifier, or the head alone when every epoch trained on cached features.
    """
    train = settings.train
    names = class_names(data.index)
    precision = resolve_precision(train.precision)
    pixels = open_image_store(data.store, settings.data.image_size)
    train_rows = rows_for(data.index, *splits)
    validation_rows = rows_for(data.index, "val") if validate else train_rows.iloc[:0]
    images_per_epoch = train.epoch_images or epoch_images(len(train_rows), [train.batch_size])
    features = open_head_features(data.features) if data.features and validate and tuple(splits) == ("train",) else None
    done = read_checkpoint_state(resume)["epoch"] if resume else 0
    classifier = head = None
    for phase in plan_phases(train):
        if phase.end < done:
            continue
        on_features = phase.unfreeze_depth == 0 and features is not None
        if on_features:
            head = model = compile_classifier(build_head(len(names), settings.model, train.seed), train, phase.learning_rate)
            batches = TrainingBatches(lambda rows, rng: features.train[rng.integers(len(features.train), size=len(rows)), rows],
                                      np.arange(len(features.train_labels)), features.train_labels, train.batch_size,
                                      images_per_epoch, train.seed, max(done, phase.start), workers)
            predict = lambda model: predict_probabilities(model, lambda positions: features.val[positions],  # noqa: E731
                                                          len(features.val), EVALUATION_BATCH)
        else:
            if classifier is None:
                classifier = build_classifier(len(names), settings.data, settings.model, phase.unfreeze_depth, train.seed, precision)
                if head is not None:
                    transfer_weights(head, classifier)
            set_unfreeze_depth(classifier.get_layer(BACKBONE_NAME), phase.unfreeze_depth, pretrained=settings.model.pretrained)
            model = compile_classifier(classifier, train, phase.learning_rate)
            store_rows = train_rows["store_row"].to_numpy(dtype=np.int64)
            batches = TrainingBatches(lambda rows, rng: pixels[rows], store_rows, train_rows["label"].to_numpy(), train.batch_size,
                                      images_per_epoch, train.seed, max(done, phase.start), workers)
            validation_store_rows = validation_rows["store_row"].to_numpy(dtype=np.int64)
            predict = lambda model: predict_probabilities(model, lambda positions: pixels[validation_store_rows[positions]],  # noqa: E731
                                                          len(validation_rows), EVALUATION_BATCH)
        if resume and phase.start <= done <= phase.end:
            restore_checkpoint(model, resume)
        if done >= phase.end:
            continue
        run_callbacks = [ValidationMetrics(predict, validation_rows["label"].to_numpy())] if validate else []
        model.fit(batches, epochs=phase.end, initial_epoch=max(done, phase.start), verbose=verbose,
                  callbacks=[*run_callbacks, EpochStats(batches.images_per_epoch), *callbacks])
        if model.stop_training:
            break
    return classifier if classifier is not None else head


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save in the standard `.keras` format, atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: model files must end in .keras")
    with atomic_path(path) as partial:
        model.save(partial)
    return path


def save_labels(names: list[str], path: str | Path) -> Path:
    """`labels.json` beside a model: output i of the model is class `names[i]`."""
    return write_json(path, {"class_names": names})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = args.overrides + ([f"data.root={args.data_dir!r}"] if args.data_dir else [])
        document = apply_overrides(read_toml(args.experiment), overrides, args.experiment)
        settings = parse_run_settings(document, args.experiment)
        output = Path(args.output)
        if output.suffix != ".keras":
            raise ConfigError(f"--output {output}: model files must end in .keras")
        dataset = prepare_dataset(settings.data)
        settings = resolve_weights(settings)
        configure_process(None, settings.train.seed)
        model = train_classifier(TrainingData(dataset.index, dataset.store), settings, verbose=1)
        save_model(model, output)
        save_labels(class_names(dataset.index), output.with_name("labels.json"))
    except (ConfigError, DatasetError, StoreError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"saved {output} and {output.with_name('labels.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
