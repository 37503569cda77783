"""carclf: one transfer-learning car classifier run (data, model, training, evaluation, prediction).

Only `carclf.trainable` knows Ray; everything else runs without it.
"""

__version__ = "0.1.0"

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the useful output; a
# user's own TF_CPP_MIN_LOG_LEVEL still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
