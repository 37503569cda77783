"""The Ray Tune trainable under a real Tuner: reported keys, the objective, light checkpoints, resuming
mid-run after a SIGKILL, and warm workers (`reuse_actors`) that train exactly as fresh ones."""

from __future__ import annotations

import math
import os
import signal
import sys

import numpy as np
import pytest
from ray import cloudpickle, tune

from carclf.checkpoints import BEST_EPOCH_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, read_best_epoch
from carclf.data.store import open_image_store
from carclf.data.table import class_names, rows_for
from carclf.evaluate import evaluate
from carclf.model import build_classifier, layer_weights, set_layer_weights
from carclf.train import EVALUATION_BATCH
from tuning.trainable import CarClassifierTrainable
from tuning.trials import Selection

# Ray's workers cannot import this test module: send its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPORTED = {"epoch", "images_seen", "phase", "precision", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
            "learning_rate", "seconds_per_epoch", "images_per_second", "best_val_accuracy", "best_epoch", "diverged",
            "setup_seconds", "train_seconds", "eval_seconds", "compile_seconds", "reused_compiled", "worker_trials"}
EPOCH_METRICS = ["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]


def _run_config(tmp_path, name, max_failures=0):
    return tune.RunConfig(name=name, storage_path=str(tmp_path), failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0)


def _trainable(cls, dataset, settings, **extra):
    return tune.with_resources(tune.with_parameters(cls, index=dataset.index, settings=settings, store=str(dataset.store),
                                                    **extra), {"cpu": 1})


def _in_order(results):
    return sorted(results, key=lambda result: result.path)


@pytest.mark.slow
def test_trials_report_every_epoch_and_checkpoint_lightly_at_their_end(ray_cluster, tiny_dataset, tiny_settings, tmp_path):
    settings = tiny_settings.with_train(epochs=3)
    tuner = tune.Tuner(_trainable(CarClassifierTrainable, tiny_dataset, settings),
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
        assert (rows["train_seconds"] > 0).all() and (rows["eval_seconds"] > 0).all() and rows["setup_seconds"].nunique() == 1
        assert rows["compile_seconds"].iloc[0] == 0 and rows["compile_seconds"].iloc[-1] >= 0
        assert rows["train_seconds"].add(rows["eval_seconds"]).le(rows["seconds_per_epoch"] + 1e-6).all()
        with result.checkpoint.as_directory() as folder:
            assert sorted(os.listdir(folder)) == sorted([WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE, BEST_EPOCH_FILE])  # no .keras model
            best_weights = read_best_epoch(folder)
        # The best epoch's weights the trial kept make a classifier that scores that epoch's value.
        assert own_model_accuracy(best_weights, settings.with_hyperparameters(result.config), tiny_dataset) == best


def own_model_accuracy(weights, settings, dataset) -> float:
    """The validation accuracy of a depth-0 classifier given a checkpoint's best epoch's weights."""
    model = build_classifier(4, settings.data, settings.model, 0, settings.train.seed, "float32")
    set_layer_weights(model, weights)
    pixels = open_image_store(dataset.store, settings.data.image_size)
    return evaluate(model, rows_for(dataset.index, "val"), pixels, class_names(dataset.index), EVALUATION_BATCH).metrics()["accuracy"]


@pytest.mark.slow
def test_a_trial_keeps_its_best_epochs_weights_when_later_epochs_are_worse(ray_cluster, tiny_dataset, tiny_settings, tmp_path):
    """Ranked by the learning rate, which decays every step, a trial's best epoch is always its first: its final
    checkpoint must hold epoch 1's weights, kept in memory through epochs 2 and 3."""
    settings = tiny_settings.with_train(epochs=3)
    trainable = _trainable(CarClassifierTrainable, tiny_dataset, settings, selection=Selection("learning_rate", "max"))
    tuner = tune.Tuner(trainable, param_space={"learning_rate": 0.01, "unfreeze_depth": 0},
                       tune_config=tune.TuneConfig(metric="best_learning_rate", mode="max"), run_config=_run_config(tmp_path, "first"))
    [result] = tuner.fit()
    rows = result.metrics_dataframe
    assert rows["best_epoch"].tolist() == [1, 1, 1]
    trial = settings.with_hyperparameters(result.config)
    with result.checkpoint.as_directory() as folder:
        weights = read_best_epoch(folder)
        last = build_classifier(4, trial.data, trial.model, 0, trial.train.seed, "float32")
        last.load_weights(os.path.join(folder, WEIGHTS_FILE))
    final = layer_weights(last)
    assert any(not np.array_equal(a, b) for name in weights for a, b in zip(weights[name], final[name]))  # epochs 2, 3 trained on
    assert own_model_accuracy(weights, trial, tiny_dataset) == rows["val_accuracy"].iloc[0]


class DiesOnceAtItsThirdEpoch(CarClassifierTrainable):
    """First attempt: train 2 of 3 epochs (checkpointing each), then the process dies (SIGKILL: no handler
    runs, no clean-up). Ray's retry must continue from epoch 2's checkpoint."""

    restored = False

    def load_checkpoint(self, checkpoint_dir):
        self.restored = True
        super().load_checkpoint(checkpoint_dir)

    def step(self):
        if self.run.epoch == 2 and not self.restored:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step()


@pytest.mark.slow
def test_restored_trial_continues_at_next_epoch_with_optimizer_state(ray_cluster, tiny_dataset, tiny_settings, tmp_path):
    settings = tiny_settings.with_train(epochs=3, learning_rate=0.01, lr_decay=0.05, unfreeze_depth=0)
    tuner = tune.Tuner(_trainable(DiesOnceAtItsThirdEpoch, tiny_dataset, settings, checkpoint_minutes=0.0), param_space={},
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
    assert rows["worker_trials"].tolist() == [1, 1, 1]  # epoch 3 ran in the new worker that replaced the killed one


class RaisesAtHalfLearningRate(CarClassifierTrainable):
    """A trial at learning rate 0.5 raises in its first epoch: a stand-in for any crash inside a warm worker."""

    def step(self):
        if self.settings.train.learning_rate == 0.5:
            raise RuntimeError("a trial that breaks")
        return super().step()


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1], ids=["head-on-network", "two-blocks-fine-tuned"])
def test_a_warm_worker_trains_exactly_as_a_fresh_one_and_a_crash_does_not_leak(ray_cluster, tiny_dataset, tiny_settings,
                                                                                tmp_path, depth):
    """Trials run one at a time with `reuse_actors`: the second reuses the first's worker and compiled model and
    must report the same epochs; the third raises; the fourth runs in the worker that replaced it, unaffected."""
    settings = tiny_settings.with_train(epochs=2, unfreeze_depth=depth, learning_rate=0.01)
    tuner = tune.Tuner(_trainable(RaisesAtHalfLearningRate, tiny_dataset, settings),
                       param_space={"learning_rate": tune.grid_search([0.01, 0.01, 0.5, 0.01])},
                       tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
                       run_config=_run_config(tmp_path, f"warm-{depth}"))
    results = _in_order(tuner.fit())
    assert [result.error is not None for result in results] == [False, False, True, False]
    fresh, warm, replaced = (results[i].metrics_dataframe for i in (0, 1, 3))
    assert fresh["worker_trials"].tolist() == [1, 1] and not fresh["reused_compiled"].any()
    assert warm["worker_trials"].tolist() == [2, 2] and warm["reused_compiled"].all()
    assert replaced["worker_trials"].tolist() == [1, 1]  # the crashed worker was not reused
    if "compiles" in fresh:  # JAX: the warm trial compiled no step program, the fresh workers theirs
        assert fresh["compiles"].iloc[-1] >= 2 and warm["compiles"].eq(0).all() and replaced["compiles"].iloc[-1] >= 2
    for other in (warm, replaced):
        # On the CPU (TensorFlow with its op determinism, or JAX): the same digits, not merely close ones.
        assert other[EPOCH_METRICS].to_numpy().tolist() == fresh[EPOCH_METRICS].to_numpy().tolist()


def test_selection_rule():
    accuracy, loss = Selection("val_accuracy", "max"), Selection("val_loss", "min")
    assert accuracy.objective == "best_val_accuracy" and accuracy.worst == -math.inf and loss.worst == math.inf
    assert accuracy.improves(0.5, 0.4) and not accuracy.improves(0.4, 0.4) and not accuracy.improves(math.nan, None)
    assert loss.improves(0.3, 0.4) and accuracy.improves(0.1, None)
