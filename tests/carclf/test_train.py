"""One training run: the loss falls, phases, divergence, the saved .keras model, the CLI and the model
folder it saves, which predict crops photos from as training cropped them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import carclf  # noqa: F401  (registers carclf's Keras objects, as a user's program would)
from carclf.config import DataConfig, TrainConfig
from carclf.data.images import load_crop
from carclf.data.store import open_image_store
from carclf.data.table import class_names, rows_for
from carclf.model_folder import ModelFolder
from carclf.phases import phase_at, plan_phases
from carclf.predict import ImageRequest, classify, load_predictor
from carclf.runtime import configure_process
from carclf.train import TrainingData, train_classifier

TRAINED_MARGIN = 0.3  # not DataConfig's default 0.05


class Logs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))


def test_loss_falls_and_the_saved_model_predicts_identically(tiny_dataset, tiny_settings, tmp_path):
    configure_process(2, seed=0)
    settings = tiny_settings.with_train(epochs=4)
    logs = Logs()
    model = train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), settings, callbacks=[logs])
    losses = [epoch["loss"] for epoch in logs.epochs]
    assert losses[-1] < losses[0]
    assert logs.epochs[-1]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    for key in ("val_loss", "val_accuracy", "val_top5_accuracy", "learning_rate", "seconds_per_epoch", "images_per_second"):
        assert all(key in epoch for epoch in logs.epochs), key
    assert [epoch["images_seen"] for epoch in logs.epochs] == [32, 64, 96, 128]  # 32 training rows, batches of 8

    path = ModelFolder(tmp_path).save(model, class_names(tiny_dataset.index), settings)
    loaded = keras.models.load_model(path, safe_mode=True)
    test = rows_for(tiny_dataset.index, "test")
    batch = open_image_store(tiny_dataset.store, 32)[test["store_row"].to_numpy()]
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".partial-*"))


def test_phases_follow_keras_fine_tuning_recipe():
    train = TrainConfig(epochs=5, head_epochs=2, unfreeze_depth=3, learning_rate=0.01, fine_tune_lr_scale=0.1)
    head, fine_tune = plan_phases(train)
    assert (head.name, head.start, head.end, head.unfreeze_depth, head.learning_rate) == ("head", 0, 2, 0, 0.01)
    assert (fine_tune.name, fine_tune.start, fine_tune.end, fine_tune.unfreeze_depth) == ("fine_tune", 2, 5, 3)
    assert fine_tune.learning_rate == pytest.approx(0.001)
    assert [phase_at(plan_phases(train), epoch).name for epoch in range(1, 6)] == ["head", "head", "fine_tune", "fine_tune", "fine_tune"]
    assert [p.name for p in plan_phases(dataclasses.replace(train, unfreeze_depth=0))] == ["head"]
    only = plan_phases(dataclasses.replace(train, head_epochs=0))
    assert [(p.name, p.learning_rate) for p in only] == [("fine_tune", 0.01)]


def test_two_phases_train_the_head_then_the_top_blocks(tiny_dataset, tiny_settings):
    configure_process(2, seed=0)
    settings = tiny_settings.with_train(epochs=3, head_epochs=1, unfreeze_depth=1, learning_rate=0.01, fine_tune_lr_scale=0.5)
    logs = Logs()
    model = train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), settings, callbacks=[logs])
    rates = [epoch["learning_rate"] for epoch in logs.epochs]
    assert rates[0] == pytest.approx(0.01 / (1 + 1e-4 * 4), rel=1e-4)
    assert rates[1] == pytest.approx(0.005 / (1 + 1e-4 * 4), rel=1e-4)  # a fresh optimizer at the lower rate
    assert model.get_layer("resnet50").get_layer("conv5_block3_3_conv").trainable


def test_a_diverging_run_stops_after_the_epoch(tiny_dataset, tiny_settings):
    configure_process(2, seed=0)
    settings = tiny_settings.with_train(epochs=4, learning_rate=1e6, lr_decay=0.0, unfreeze_depth=1)
    logs = Logs()
    train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), settings, callbacks=[logs])
    assert logs.epochs[-1]["diverged"] == 1.0 and len(logs.epochs) < 4


@pytest.fixture(scope="module")
def train_command(tiny_cars, tmp_path_factory):
    """`python -m carclf.train` run once, head only, cropping the training images with a box margin of
    `TRAINED_MARGIN`; its result and the model file it saved."""
    folder = tmp_path_factory.mktemp("train_command")
    experiment = folder / "one.toml"
    experiment.write_text(
        f'[data]\nformat = "devkit"\nroot = "{tiny_cars}"\nimage_size = 32\ncache_dir = "{folder / "cache"}"\n'
        '[model]\nweights = "none"\n[train]\nepochs = 1\nbatch_size = 16\nprecision = "float32"\n[search]\nnum_samples = 3\n'
    )
    out = folder / "out" / "model.keras"
    result = subprocess.run([sys.executable, "-m", "carclf.train", "--experiment", str(experiment), "--output", str(out),
                             "--set", "train.unfreeze_depth=0", "--set", f"data.bbox_margin={TRAINED_MARGIN}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, out


def test_train_command_saves_model_labels_and_settings(train_command, tiny_index):
    result, out = train_command
    assert out.is_file() and (out.parent / "labels.json").is_file()
    assert "━" in result.stdout and "val_accuracy" in result.stdout  # Keras' progress bar
    assert json.loads((out.parent / "labels.json").read_text()) == {"class_names": class_names(tiny_index)}
    config = json.loads((out.parent / "config.json").read_text())
    assert config["hyperparameters"] is None and config["precision"] == "float32"
    assert config["settings"]["data"]["bbox_margin"] == TRAINED_MARGIN and config["settings"]["train"]["unfreeze_depth"] == 0
    assert f"saved {out} with labels.json and config.json beside it" in result.stdout


def test_predict_crops_a_boxed_photo_with_the_margin_the_model_trained_with(train_command, photos):
    """The margin a model trained with is the one predict crops with, not carclf's default."""
    predictor = load_predictor(train_command[1])
    assert predictor.data.bbox_margin == TRAINED_MARGIN and predictor.data.crop_to_bbox and predictor.data.image_size == 32
    [result] = classify(predictor, [ImageRequest(str(photos.car), photos.car_box)], top_k=len(predictor.class_names))
    answered = {entry["class_name"]: entry["probability"] for entry in result["top"]}
    served = np.array([answered[name] for name in predictor.class_names])

    def output_on_crop(margin: float) -> np.ndarray:
        return predictor.model.predict(load_crop(photos.car, photos.car_box, 32, margin)[None], verbose=0)[0]

    trained, default = output_on_crop(TRAINED_MARGIN), output_on_crop(DataConfig().bbox_margin)
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-6)
    assert np.abs(trained - default).max() > 1e-4, "the two margins give the same output: this photo cannot tell them apart"


def test_train_command_names_bad_key(tmp_path):
    experiment = tmp_path / "bad.toml"
    experiment.write_text('[train]\nlearning_rate = -1.0\n')
    result = subprocess.run([sys.executable, "-m", "carclf.train", "--experiment", str(experiment)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bad.toml [train]: key learning_rate must be > 0" in result.stderr
