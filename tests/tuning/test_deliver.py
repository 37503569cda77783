"""The delivered model on hand-made trials: a retraining that departs from its trial is caught and the trial's own
model delivered instead; "trial" delivers it without retraining; without it the retrained model goes unchecked."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import carclf  # noqa: F401  (registers carclf's Keras objects, as loading best/model.keras needs)
from carclf.checkpoints import save_best_epoch, save_checkpoint
from carclf.data.store import open_image_store
from carclf.data.table import rows_for
from carclf.model import layer_weights
from carclf.runtime import configure_process
from carclf.train import TrainingData, TrainingRun
from tuning.deliver import REPRODUCTION_MARGIN, correct, deliver_model, following, reproduction, trial_own_model
from tuning.run_folder import RunFolder
from tuning.trials import DeliveredTrial

TRIAL_EPOCHS = 4


@pytest.fixture(scope="module")
def trial_run(tiny_dataset, tiny_settings, tmp_path_factory):
    """A run folder holding a finished trial ("t"): 4 epochs on the training split, the final checkpoint with its best
    epoch (the last) as the trainable writes it, and a start trial ("s") of 1 epoch; returns the folder, the trial's
    settings and its model."""
    configure_process(2, seed=0)
    settings = tiny_settings.with_train(epochs=TRIAL_EPOCHS)
    run = TrainingRun(TrainingData(tiny_dataset.index, tiny_dataset.store), settings)
    folder = RunFolder(tmp_path_factory.mktemp("run"))
    run.train_epoch()  # a start trial "s" that ended here, at its best epoch, 1
    start = folder.ray_dir / "CarClassifierTrainable_s_2" / "checkpoint_000000"
    save_checkpoint(run.final_model, start, {"phase": "fine_tune", "best": 0.25, "best_epoch": 1, "epoch": 1})
    save_best_epoch(layer_weights(run.final_model), start)
    while not run.finished:
        run.train_epoch()
    checkpoint = folder.ray_dir / "CarClassifierTrainable_t_1" / f"checkpoint_{TRIAL_EPOCHS - 1:06d}"
    save_checkpoint(run.final_model, checkpoint, {"phase": "fine_tune", "best": 0.5, "best_epoch": TRIAL_EPOCHS, "epoch": TRIAL_EPOCHS})
    save_best_epoch(layer_weights(run.final_model), checkpoint)
    return folder, settings, run.final_model


def winner(**hyperparameters) -> DeliveredTrial:
    return DeliveredTrial("t", {"learning_rate": 0.001, **hyperparameters}, best_epoch=TRIAL_EPOCHS, score=0.5,
                  folder_name="CarClassifierTrainable_t_1")


def test_a_retraining_that_departs_from_its_trial_is_caught_and_the_trials_model_is_delivered(trial_run, tiny_dataset):
    folder, settings, trial_model = trial_run
    # The same trial, but the retraining's learning rate too small to learn: it cannot train like its trial.
    metrics = deliver_model(tiny_dataset.index, tiny_dataset.store, settings, winner(learning_rate=1e-7), "train+val", folder,
                            "val_accuracy", cpus=2)
    check = metrics["reproduction"]
    assert check["verdict"] == "departed" and check["images"] == 32
    assert check["trial_accuracy"] > 0.5 and check["retrained_accuracy"] < check["trial_accuracy"] - 0.2
    assert metrics["delivered"] == "trial" and "did not train like its trial" in metrics["reason"]
    assert json.loads(folder.metrics_file.read_text())["delivered"] == "trial"
    # What best/ holds is the trial's model: it predicts the test rows exactly as the trial's model does.
    delivered = keras.models.load_model(folder.best / "model.keras", safe_mode=True)
    test = open_image_store(tiny_dataset.store, 32)[rows_for(tiny_dataset.index, "test")["store_row"].to_numpy()]
    np.testing.assert_allclose(delivered.predict(test, verbose=0), trial_model.predict(test, verbose=0), rtol=1e-5, atol=1e-6)
    assert metrics["test"]["count"] == 12


def test_choice_trial_delivers_the_trials_own_model_without_retraining(trial_run, tiny_dataset):
    folder, settings, _ = trial_run
    metrics = deliver_model(tiny_dataset.index, tiny_dataset.store, settings, winner(), "trial", folder, "val_accuracy", cpus=2)
    assert metrics["delivered"] == "trial" and metrics["reproduction"] is None and "retrain_s" not in metrics
    assert metrics["trial"] == {"trial_id": "t", "metric": "val_accuracy", "score": 0.5, "best_epoch": TRIAL_EPOCHS}


def test_without_the_trials_own_model_the_retrained_model_is_delivered_unchecked(trial_run, tiny_dataset):
    folder, settings, _ = trial_run
    lost = DeliveredTrial("u", {"learning_rate": 0.001}, best_epoch=2, score=0.5, folder_name="CarClassifierTrainable_u_2")
    metrics = deliver_model(tiny_dataset.index, tiny_dataset.store, settings, lost, "trial", folder, "val_accuracy", cpus=2)
    assert metrics["delivered"] == "retrained" and metrics["reproduction"] is None and "unchecked" in metrics["reason"]
    assert len(metrics["retrain_history"]) == 2


def test_the_check_departs_only_beyond_noise_and_margin():
    trial = np.array([True] * 80 + [False] * 20)
    assert reproduction(trial, trial)["verdict"] == "reproduced"
    slightly_worse = trial.copy()
    slightly_worse[: int(REPRODUCTION_MARGIN * 100)] = False  # within the margin, no noise: reproduced
    assert reproduction(trial, slightly_worse)["verdict"] == "reproduced"
    much_worse = trial.copy()
    much_worse[:30] = False
    result = reproduction(trial, much_worse)
    assert result["verdict"] == "departed" and result["difference"] == pytest.approx(-0.30)
    assert result["standard_error"] == pytest.approx(np.std(np.r_[[-1.0] * 30, [0.0] * 70], ddof=1) / 10)
    assert reproduction(much_worse, trial)["verdict"] == "reproduced"  # a retraining better than its trial is no departure



@pytest.mark.parametrize("epoch_images, train_rows, pooled_rows, expected", [(320, 320, 640, 640), (96, 100, 125, 120), (0, 40, 50, 48)])
def test_the_retraining_sees_each_image_as_often_as_its_trial_at_the_trials_learning_rates(tiny_settings, epoch_images, train_rows,
                                                                                             pooled_rows, expected):
    trial = tiny_settings.with_train(epoch_images=epoch_images, batch_size=8, lr_decay=1e-3, epochs=4)
    retraining = following(trial, train_rows, pooled_rows).train
    assert retraining.epoch_images == expected and retraining.epoch_images % 8 == 0
    trial_steps = (epoch_images or train_rows // 8 * 8) // 8
    for epoch in range(1, 5):  # the learning rate at each epoch's end: lr / (1 + decay * steps so far)
        assert 1 + retraining.lr_decay * epoch * (expected // 8) == pytest.approx(1 + 1e-3 * epoch * trial_steps)
    assert (retraining.epochs, retraining.seed, retraining.learning_rate) == (4, trial.train.seed, trial.train.learning_rate)


def test_the_start_is_delivered_the_same_way_and_tested_beside_the_winner(trial_run, tiny_dataset):
    folder, settings, trial_model = trial_run
    start = DeliveredTrial("s", {"learning_rate": 0.001}, best_epoch=1, score=0.25, folder_name="CarClassifierTrainable_s_2")
    metrics = deliver_model(tiny_dataset.index, tiny_dataset.store, settings, winner(), "trial", folder, "val_accuracy", cpus=2,
                            start=start)
    against = metrics["start"]
    assert against["delivered"] == "trial" and against["trial"]["trial_id"] == "s" and "retrain_s" not in against
    test = rows_for(tiny_dataset.index, "test")
    start_model = trial_own_model(folder.ray_dir / start.folder_name, 1, 4, settings.with_train(epochs=1))
    start_right = correct(start_model, test, open_image_store(tiny_dataset.store, 32), ["a", "b", "c", "d"])
    assert against["test_accuracy"] == start_right.mean()
    assert against["gain"] == pytest.approx(metrics["test"]["accuracy"] - start_right.mean())
    beats = against["gain"] > 1.96 * against["standard_error"]
    assert against["statement"].startswith("tuning helped on test" if beats else "tuning did")
    assert deliver_model(tiny_dataset.index, tiny_dataset.store, settings, winner(), "trial", folder, "val_accuracy", cpus=2,
                         start=winner()).get("start") is None  # the start won: nothing to compare
