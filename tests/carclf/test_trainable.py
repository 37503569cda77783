"""The Ray Tune trainable under a real Tuner: reported keys, the objective, light checkpoints, resuming mid-run."""

from __future__ import annotations

import math
import os
import signal
import sys

import pytest
from ray import cloudpickle, tune

from carclf.checkpoints import OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE
from carclf.trainable import Selection, train_car_classifier

# Ray's workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPORTED = {"epoch", "images_seen", "phase", "precision", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
            "learning_rate", "seconds_per_epoch", "images_per_second", "best_val_accuracy", "best_epoch", "diverged"}


def _run_config(tmp_path, name, max_failures=0):
    return tune.RunConfig(name=name, storage_path=str(tmp_path), failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0)


def _trainable(function, dataset, settings, **extra):
    return tune.with_resources(tune.with_parameters(function, index=dataset.index, settings=settings, store=str(dataset.store),
                                                    **extra), {"cpu": 1})


def test_trials_report_every_epoch_and_checkpoint_lightly_at_their_end(ray_cluster, tiny_dataset, tiny_settings, tmp_path):
    settings = tiny_settings.with_train(epochs=3)
    tuner = tune.Tuner(_trainable(train_car_classifier, tiny_dataset, settings),
                       param_space={"learning_rate": tune.grid_search([0.01, 0.002]), "unfreeze_depth": 0},
                       tune_config=tune.TuneConfig(metric="best_val_accuracy", mode="max"), run_config=_run_config(tmp_path, "two"))
    results = tuner.fit()
    assert len(results) == 2 and results.num_errors == 0
    for result in results:
        rows = result.metrics_dataframe
        assert REPORTED <= set(rows.columns)
        assert rows["epoch"].tolist() == [1, 2, 3] and rows["phase"].eq("head").all() and rows["precision"].eq("float32").all()
        best = rows["val_accuracy"].max()
        assert rows["best_val_accuracy"].iloc[-1] == best
        assert rows["best_epoch"].iloc[-1] == rows.loc[rows["val_accuracy"] == best, "epoch"].min()  # the first epoch at the best
        assert rows["best_val_accuracy"].is_monotonic_increasing
        assert rows["checkpoint_bytes"].notna().tolist() == [False, False, True]  # only at the end (10-minute default)
        with result.checkpoint.as_directory() as folder:
            assert sorted(os.listdir(folder)) == sorted([WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE])  # no .keras model


def _fails_once_after_two_epochs(config, index, settings, store):
    """First attempt: train 2 of 3 epochs, then the process dies (SIGKILL: no handler runs, no clean-up).

    Ray's retry must continue from epoch 2's checkpoint.
    """
    if tune.get_checkpoint() is None:
        train_car_classifier({}, index, settings.with_train(epochs=2), store)
        os.kill(os.getpid(), signal.SIGKILL)
    train_car_classifier({}, index, settings, store)


def test_restored_trial_continues_at_next_epoch_with_optimizer_state(ray_cluster, tiny_dataset, tiny_settings, tmp_path):
    settings = tiny_settings.with_train(epochs=3, learning_rate=0.01, lr_decay=0.05, unfreeze_depth=0)
    tuner = tune.Tuner(_trainable(_fails_once_after_two_epochs, tiny_dataset, settings), param_space={},
                       run_config=_run_config(tmp_path, "resume", max_failures=1))
    result = tuner.fit()[0]
    assert result.error is None
    rows = result.metrics_dataframe
    assert rows["epoch"].tolist() == [1, 2, 3]  # not 1, 2, 1, 2, 3
    steps = 4  # 32 rows, batches of 8
    for epoch, rate in zip(rows["epoch"], rows["learning_rate"]):
        # The decay keeps counting optimizer steps across the restart: the state was restored.
        assert rate == pytest.approx(0.01 / (1 + 0.05 * epoch * steps), rel=1e-5)
    assert rows["best_epoch"].iloc[-1] in (1, 2, 3)


def test_selection_rule():
    accuracy, loss = Selection("val_accuracy", "max"), Selection("val_loss", "min")
    assert accuracy.objective == "best_val_accuracy" and accuracy.worst == -math.inf and loss.worst == math.inf
    assert accuracy.improves(0.5, 0.4) and not accuracy.improves(0.4, 0.4) and not accuracy.improves(math.nan, None)
    assert loss.improves(0.3, 0.4) and accuracy.improves(0.1, None)
