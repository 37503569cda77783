"""carclf: one transfer-learning car classifier run (data, model, training, evaluation, prediction).

carclf knows no Ray (the search and its trainable are `tuning`), and only `carclf.runtime` knows TensorFlow or JAX by name.
Importing carclf checks the Keras backend (from the environment, without loading Keras) and makes
sure carclf's Keras layers, loss and optimizer are registered whenever Keras is there, so
`keras.models.load_model` reads a saved classifier after a plain `import carclf`, whether Keras
was imported before carclf or after it.

Importing carclf does not load Keras (and so TensorFlow) itself: a command's `--help` and its
argument errors answer at once, not after the seconds TensorFlow takes to start.
"""

__version__ = "0.2.0"

import importlib.abc
import importlib.machinery
import os
import sys

from carclf.runtime import DEFAULT_TF_LOG_LEVEL, probe_devices, quiet_backend_startup, require_supported_backend

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the useful output: errors
# only, applied to TensorFlow's earliest records too (quiet_backend_startup, when Keras loads). A
# user's own TF_CPP_MIN_LOG_LEVEL still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
require_supported_backend()


def _register_keras_objects() -> None:
    from carclf import layers, model  # noqa: F401  (registers carclf's Keras objects)


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `keras` as Python would, then lets Keras' own loader run and registers carclf's objects.

    It leaves `sys.meta_path` as soon as Keras has loaded; until then a mere `find_spec("keras")`
    (a library asking whether Keras is installed) changes nothing.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        self.keras_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.keras_loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.keras_loader  # Keras sees its own loader
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        with quiet_backend_startup():
            self.keras_loader.exec_module(module)
            probe_devices()
        _register_keras_objects()


if "keras" in sys.modules:
    _register_keras_objects()
else:
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
