"""Compiled models kept in a process between training runs, so a run of a shape seen before compiles nothing.

Keras compiles a model's train and predict steps on its first `fit` and `predict_on_batch` (a traced
`tf.function` on TensorFlow, `jax.jit` programs on JAX) and keeps them on the model object. A search
runs many trials whose models differ only in values: the learning rate, its decay and the momentum
are optimizer variables (`carclf.model.DecayingSGD`), not constants of the program. So a worker that
runs several trials keeps each compiled model, keyed by everything that fixes its program and its
starting weights (architecture, trainable blocks, precision, loss, seeds), and hands it to the next
run of that key with every variable put back to the value it had when the model was built: weights,
BatchNorm statistics, the augmentation's and dropout's seed states, and the optimizer's slots and
step count. The run then sets its own rate, decay and momentum (`carclf.model.set_optimizer_values`).

The batch size is not part of the key: a compiled step serves any batch shape it has seen (JAX keeps
one program per shape, TensorFlow relaxes its trace after a second shape).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

import keras
import numpy as np

KEPT_MODELS = 4  # the head, a fine-tuned network and two more; ResNet50 at 224 px is about 200 MB with its momentum


class CompiledModels:
    """At most `keep` compiled models, least recently used first out; see the module docstring."""

    def __init__(self, keep: int = KEPT_MODELS):
        self.keep = keep
        self._models: OrderedDict[Hashable, tuple[keras.Model, list[tuple[keras.Variable, np.ndarray]]]] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], keras.Model]) -> tuple[keras.Model, bool]:
        """The model for `key` in its as-built state, and whether it was reused (True) or built now by `build()`,
        which returns a compiled model."""
        if key in self._models:
            model, initial = self._models[key]
            self._models.move_to_end(key)
            for variable, value in initial:
                variable.assign(value)
            model.stop_training = False
            return model, True
        model = build()
        model.optimizer.build(model.trainable_variables)  # its slots exist now, so their starting values are kept too
        variables = {id(variable): variable for variable in [*model.variables, *model.optimizer.variables]}
        self._models[key] = (model, [(variable, np.array(keras.ops.convert_to_numpy(variable))) for variable in variables.values()])
        while len(self._models) > self.keep:
            self._models.popitem(last=False)
        return model, False

    def __len__(self) -> int:
        return len(self._models)
