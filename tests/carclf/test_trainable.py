"""The Ray Tune trainable under a real Tuner: reported keys, checkpoints, resuming mid-run."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

import pytest
from ray import cloudpickle, tune

from carclf.trainable import restore_from_checkpoint, train_car_classifier

# Ray's workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPORTED = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy", "learning_rate",
            "seconds_per_epoch", "images_per_second"}


def _run_config(tmp_path, name, max_failures=0):
    return tune.RunConfig(name=name, storage_path=str(tmp_path), failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0)


def test_two_short_trials_report_every_epoch_with_checkpoints(ray_cluster, tiny_index, tiny_settings, tmp_path):
    settings = dataclasses.replace(tiny_settings, train=dataclasses.replace(tiny_settings.train, epochs=2))
    trainable = tune.with_resources(tune.with_parameters(train_car_classifier, index=tiny_index, settings=settings), {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space={"learning_rate": tune.grid_search([0.01, 0.002]), "unfreeze_depth": 0},
                       tune_config=tune.TuneConfig(metric="val_accuracy", mode="max"), run_config=_run_config(tmp_path, "two"))
    results = tuner.fit()
    assert len(results) == 2 and results.num_errors == 0
    for result in results:
        rows = result.metrics_dataframe
        assert REPORTED <= set(rows.columns)
        assert rows["epoch"].tolist() == [1, 2]
        assert result.config["learning_rate"] in (0.01, 0.002)
        model, epochs_done = restore_from_checkpoint(result.checkpoint)
        assert epochs_done == 2
        assert int(model.optimizer.iterations) == 2 * 4  # 32 training rows in batches of 8


def _fails_once_after_two_epochs(config, index, settings):
    """First attempt: train 2 of 3 epochs, then crash (`config["crash"]`: raise, or SIGKILL the process).

    The retry must continue from epoch 2's checkpoint.
    """
    if tune.get_checkpoint() is None:
        short = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=2))
        train_car_classifier({}, index, short)
        if config["crash"] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("injected failure after epoch 2")
    train_car_classifier({}, index, settings)


@pytest.mark.parametrize("crash", ["raise", "sigkill"])
def test_restored_trial_continues_at_next_epoch_with_optimizer_state(ray_cluster, tiny_index, tiny_settings, tmp_path, crash):
    train = dataclasses.replace(tiny_settings.train, epochs=3, learning_rate=0.01, lr_decay=0.05, unfreeze_depth=0)
    settings = dataclasses.replace(tiny_settings, train=train)
    trainable = tune.with_parameters(_fails_once_after_two_epochs, index=tiny_index, settings=settings)
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space={"crash": crash},
                       run_config=_run_config(tmp_path, "resume", max_failures=1))
    result = tuner.fit()[0]
    assert result.error is None
    rows = result.metrics_dataframe
    assert rows["epoch"].tolist() == [1, 2, 3]  # not 1, 2, 1, 2, 3
    steps = 4  # 32 rows, batches of 8
    for epoch, rate in zip(rows["epoch"], rows["learning_rate"]):
        # The decay keeps counting optimizer steps across the restart: the state was restored.
        assert rate == pytest.approx(0.01 / (1 + 0.05 * epoch * steps), rel=1e-5)
    assert result.metrics["epoch"] == 3
