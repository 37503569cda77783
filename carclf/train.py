"""One training run: build the classifier, fit it epoch by epoch, save it as `.keras`.

`python -m carclf.train --experiment FILE [--set key=value ...]` trains one configuration
without Ray, with Keras' progress bar, and saves the model and its labels.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import keras
import pandas as pd

from carclf.config import ConfigError, RunSettings, apply_overrides, parse_run_settings, read_toml
from carclf.data.pipeline import make_dataset, naming_bad_images, steps_per_pass
from carclf.data.sources import index_dataset
from carclf.data.splits import rows_for
from carclf.data.table import DatasetError, class_names
from carclf.files import atomic_path, write_json
from carclf.model import build_classifier, compile_classifier, current_learning_rate
from carclf.runtime import configure_tensorflow

logger = logging.getLogger(__name__)


class EpochStats(keras.callbacks.Callback):
    """Adds the learning rate, seconds per epoch and training images per second to each epoch's logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)
            logs["seconds_per_epoch"] = seconds
            logs["images_per_second"] = self.images_per_epoch / seconds


def build_model(num_classes: int, settings: RunSettings) -> keras.Model:
    """The compiled classifier for `settings`."""
    model = build_classifier(num_classes, settings.data.image_size, settings.model, settings.train.unfreeze_depth)
    return compile_classifier(model, settings.train)


def fit(
    model: keras.Model,
    index: pd.DataFrame,
    settings: RunSettings,
    *,
    train_splits: Sequence[str] = ("train",),
    validate: bool = True,
    epochs: int | None = None,
    initial_epoch: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    image_store: str | Path | None = None,
) -> keras.callbacks.History:
    """Train `model` on the `train_splits` rows, validating on "val" after each epoch if `validate`.

    Runs epochs `initial_epoch` .. `epochs` (default `settings.train.epochs`), so a run restored
    from a checkpoint continues where it stopped. `steps_per_epoch` 0 means one pass per epoch.
    `image_store` reads decoded pixels from a `carclf.data.store` instead of the image files.
    """
    train = settings.train
    train_rows = rows_for(index, *train_splits)
    steps = train.steps_per_epoch or steps_per_pass(train_rows, train.batch_size)
    train_data = make_dataset(train_rows, settings.data, train.batch_size, training=True, seed=train.seed,
                              repeat=bool(train.steps_per_epoch), image_store=image_store)
    validation_rows = rows_for(index, "val") if validate else train_rows.iloc[:0]
    validation_data = (
        make_dataset(validation_rows, settings.data, train.batch_size, training=False, image_store=image_store)
        if len(validation_rows)
        else None
    )
    with naming_bad_images(pd.concat([train_rows, validation_rows])):
        return model.fit(
            train_data,
            epochs=epochs or train.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=validation_data,
            callbacks=[EpochStats(steps * train.batch_size), *callbacks],
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=verbose,
        )


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
    parser = argparse.ArgumentParser(prog="python -m carclf.train", description="Train one configuration, without Ray.")
    parser.add_argument("--experiment", required=True, help="experiment TOML file ([data], [model] and [train] are used)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--data-dir", help="dataset root, overriding data.root")
    parser.add_argument("--output", default="model.keras", help="where to save the trained model (default: model.keras)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = args.overrides + ([f"data.root={args.data_dir!r}"] if args.data_dir else [])
        document = apply_overrides(read_toml(args.experiment), overrides, args.experiment)
        settings = parse_run_settings(document, args.experiment)
        configure_tensorflow(None, settings.train.seed)
        index = index_dataset(settings.data)
        names = class_names(index)
        model = build_model(len(names), settings)
        fit(model, index, settings, verbose=1)
        output = save_model(model, args.output)
        save_labels(names, output.with_name("labels.json"))
    except (ConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved {output} and {output.with_name('labels.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
