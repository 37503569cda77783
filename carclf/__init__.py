"""carclf: one transfer-learning car classifier run (data, model, training, evaluation, prediction).

Only `carclf.trainable` knows Ray, and only `carclf.runtime` knows TensorFlow or JAX by name.
Importing carclf checks the Keras backend first (TensorFlow or JAX), then registers carclf's Keras
layers, loss and optimizer, so `keras.models.load_model` reads a saved classifier after a plain
`import carclf`.
"""

__version__ = "0.2.0"

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the useful output; a
# user's own TF_CPP_MIN_LOG_LEVEL still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from carclf.runtime import require_supported_backend  # noqa: E402

require_supported_backend()

from carclf import layers, model  # noqa: E402,F401  (registers carclf's Keras objects)
