"""Training images per second of the ResNet50 classifier at 64 and 224 px, unfreeze depths 0, 3, 16.

Measures the model alone (in-memory batches, no input pipeline), after a warm-up that pays for
graph tracing, all configurations in one run.

    python benchmarks/train_step.py [--batch 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from carclf.config import ModelConfig, TrainConfig  # noqa: E402
from carclf.model import build_classifier, compile_classifier  # noqa: E402

NUM_CLASSES = 196


def rate(image_size: int, depth: int, batch: int, steps: int) -> float:
    model = compile_classifier(build_classifier(NUM_CLASSES, image_size, ModelConfig(weights="none"), depth), TrainConfig())
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, image_size, image_size, 3)).astype("float32") * 50
    labels = rng.integers(0, NUM_CLASSES, batch)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.steps} measured steps, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print("image px  depth  images/s")
    results = {}
    for size in (64, 224):
        for depth in (0, 3, 16):
            results[size, depth] = rate(size, depth, args.batch, args.steps)
            print(f"{size:8d}  {depth:5d}  {results[size, depth]:8.1f}", flush=True)
    for size in (64, 224):
        print(f"{size} px: head only is {results[size, 0] / results[size, 16]:.1f}x full fine-tuning")


if __name__ == "__main__":
    main()
