"""GPU-ready by proof, on the CPU: what XLA gets from carclf's training on JAX (the JAX lane runs these).

- The lowered train step holds no host callback (no custom call back into Python), the property whose
  absence made Keras' stock `RandomRotation` 47 times slower on a GPU.
- One epoch compiles one train-step and one predict-step program; the next epoch compiles none, and
  neither does a second run of the same shape that reuses the compiled model (`carclf.compiled_models`).
- The flip and rotation add a bounded number of gathers to the program, against the same model
  without augmentation.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import pytest

from carclf.compilation import compile_counter
from carclf.compiled_models import CompiledModels
from carclf.runtime import configure_process
from carclf.train import TrainingData, TrainingRun

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="JAX programs: run in the JAX lane (KERAS_BACKEND=jax, see .ci/run)")

HOST_CALLBACKS = re.compile(r"callback|py_func|host_compute|SendToHost|RecvFromHost", re.IGNORECASE)
ROTATION_GATHERS = 8  # bilinear sampling reads 4 neighbours; a flip is a gather too; headroom for XLA's lowering


def _settings(tiny_settings, rotation_degrees=10.0, horizontal_flip=True):
    data = dataclasses.replace(tiny_settings.data, rotation_degrees=rotation_degrees, horizontal_flip=horizontal_flip)
    return dataclasses.replace(tiny_settings, data=data).with_train(epochs=2, unfreeze_depth=1, learning_rate=0.01)


def _trained_run(tiny_dataset, settings, models=None) -> TrainingRun:
    configure_process(1, settings.train.seed)
    run = TrainingRun(TrainingData(tiny_dataset.index, tiny_dataset.store), settings, models=models)
    run.train_epoch()
    return run


def _lowered_train_step(model: keras.Model, batch_size: int, image_size: int) -> str:
    """The StableHLO text of Keras' JAX train step for this compiled model at this batch shape."""
    import jax

    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
             [v.value for v in model.optimizer.variables], [v.value for v in model.metrics_variables])
    images = np.zeros((batch_size, image_size, image_size, 3), np.uint8)
    labels = np.zeros((batch_size,), np.int32)
    return jax.jit(model.train_step).lower(state, (images, labels)).as_text()


def test_the_train_step_is_one_program_without_host_callbacks(tiny_dataset, tiny_settings):
    settings = _settings(tiny_settings)
    run = _trained_run(tiny_dataset, settings)
    text = _lowered_train_step(run.current.model, settings.train.batch_size, settings.data.image_size)
    assert "stablehlo.convolution" in text  # it is the whole network's step
    calls = re.findall(r"custom_call[^\n]*", text)
    assert not [call for call in calls if HOST_CALLBACKS.search(call)], calls
    assert not HOST_CALLBACKS.search(text)


def test_an_epoch_compiles_one_train_and_one_predict_program_and_nothing_after(tiny_dataset, tiny_settings):
    counter = compile_counter()
    settings = _settings(tiny_settings)
    models = CompiledModels()
    before = len(counter.compiled)
    run = _trained_run(tiny_dataset, settings, models)
    first = counter.compiled[before:]
    assert [name for name in first if "_step" in name] == ["jit(train_step)", "jit(predict_step)"]
    assert counter.step_programs(since=before) == 2
    before = len(counter.compiled)
    run.train_epoch()
    assert counter.step_programs(since=before) == 0, counter.compiled[before:]
    # A second run of the same shape in this process, as a warm trial worker runs it: nothing to compile.
    before = len(counter.compiled)
    again = _trained_run(tiny_dataset, settings.with_train(learning_rate=0.003, lr_decay=0.01), models)
    assert again.current.reused
    assert counter.step_programs(since=before) == 0, counter.compiled[before:]


def test_flip_and_rotation_add_a_bounded_number_of_gathers(tiny_dataset, tiny_settings):
    def gathers(settings) -> int:
        run = _trained_run(tiny_dataset, settings)
        return _lowered_train_step(run.current.model, settings.train.batch_size, settings.data.image_size).count("gather")

    augmented = gathers(_settings(tiny_settings))
    plain = gathers(_settings(tiny_settings, rotation_degrees=0.0, horizontal_flip=False))
    assert 0 < augmented - plain <= ROTATION_GATHERS, (augmented, plain)
