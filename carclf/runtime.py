"""Process-level TensorFlow settings for one training run: threads, GPU memory, seeds."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)


def configure_tensorflow(cpus: int | None, seed: int) -> None:
    """Limit TensorFlow to `cpus` threads, let GPUs grow their memory, and seed everything.

    Thread counts keep concurrent trials from oversubscribing the machine; memory growth lets
    fractional-GPU trials share one card. Both only take effect before TensorFlow's first op,
    which is why a trial calls this first.
    """
    try:
        if cpus:
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(cpus)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:  # TensorFlow already initialised in this process
        logger.debug("TensorFlow runtime already configured: %s", error)
    keras.utils.set_random_seed(seed)
