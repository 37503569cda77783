"""One training run: the loss falls, the saved .keras model predicts identically, the CLI works."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import keras
import numpy as np

from carclf.data.pipeline import make_dataset
from carclf.data.splits import rows_for
from carclf.data.table import class_names
from carclf.runtime import configure_tensorflow
from carclf.train import build_model, fit, save_model


def test_loss_falls_and_saved_model_predicts_identically(tiny_index, tiny_settings, tmp_path):
    configure_tensorflow(2, seed=0)
    settings = dataclasses.replace(tiny_settings, train=dataclasses.replace(tiny_settings.train, epochs=4))
    model = build_model(len(class_names(tiny_index)), settings)
    history = fit(model, tiny_index, settings)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert history.history["accuracy"][-1] > 0.5  # 4 classes: chance is 0.25
    for key in ("val_accuracy", "val_top5_accuracy", "learning_rate", "seconds_per_epoch", "images_per_second"):
        assert len(history.history[key]) == 4, key

    path = save_model(model, tmp_path / "model.keras")
    loaded = keras.models.load_model(path, safe_mode=True)
    batch = next(iter(make_dataset(rows_for(tiny_index, "test"), settings.data, 8, training=False)))[0]
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".partial-*"))


def test_steps_per_epoch_repeats_the_data(tiny_index, tiny_settings):
    train = dataclasses.replace(tiny_settings.train, epochs=1, steps_per_epoch=7, unfreeze_depth=0)
    settings = dataclasses.replace(tiny_settings, train=train)
    model = build_model(len(class_names(tiny_index)), settings)
    fit(model, tiny_index, settings)
    assert int(model.optimizer.iterations) == 7  # more than one pass over 32 rows in batches of 8


def test_train_command_saves_model_and_labels(tiny_cars, tmp_path):
    experiment = tmp_path / "one.toml"
    experiment.write_text(
        f'[data]\nformat = "devkit"\nroot = "{tiny_cars}"\nimage_size = 32\n'
        '[model]\nweights = "none"\n[train]\nepochs = 1\nbatch_size = 16\n[search]\nnum_samples = 3\n'
    )
    out = tmp_path / "out" / "model.keras"
    result = subprocess.run([sys.executable, "-m", "carclf.train", "--experiment", str(experiment), "--output", str(out),
                             "--set", "train.unfreeze_depth=0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and (out.parent / "labels.json").is_file()
    assert "━" in result.stdout and "val_accuracy" in result.stdout  # Keras' progress bar


def test_train_command_names_bad_key(tmp_path):
    experiment = tmp_path / "bad.toml"
    experiment.write_text('[train]\nlearning_rate = -1.0\n')
    result = subprocess.run([sys.executable, "-m", "carclf.train", "--experiment", str(experiment)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bad.toml [train]: key learning_rate must be > 0" in result.stderr
