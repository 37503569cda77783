"""The classifier's train step with the flip + rotation layer active against inactive, at 64 and 224 px.

    python benchmarks/train_step.py            # both Keras backends, side by side (each in its own process)
    python benchmarks/train_step.py --backend  # this process's backend only

196 classes, random weights, batches of 16 uint8 images already in memory, unfreeze depth 0 (the
fastest step, where the augmentation weighs most) and 16 (full fine-tuning). Each setting compiles,
runs 2 warm-up steps and times the next ones. Goal: augmentation inside the model costs <= 10 %.
Prints a markdown table and writes `train_step.json` in the current folder.
"""

from __future__ import annotations

import time

import numpy as np
from backends import measure_each_backend

BATCH = 16
SETTINGS = [(64, 0, 6), (64, 16, 4), (224, 0, 3), (224, 16, 2)]  # image px, unfreeze depth, timed steps


def images_per_second(size: int, depth: int, steps: int, augment: bool) -> float:
    import keras

    from carclf.config import DataConfig, ModelConfig, TrainConfig
    from carclf.model import build_classifier, compile_classifier

    keras.utils.set_random_seed(0)
    data = DataConfig(image_size=size, rotation_degrees=20.0 if augment else 0.0, horizontal_flip=augment)
    model = compile_classifier(build_classifier(196, data, ModelConfig(weights="none"), depth), TrainConfig())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 196, BATCH)
    for _ in range(2):
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return steps * BATCH / (time.perf_counter() - started)


def measure_this_backend() -> dict:
    import keras

    from carclf.runtime import configure_process

    configure_process(None, seed=0)
    rows = []
    for size, depth, steps in SETTINGS:
        plain = images_per_second(size, depth, steps, augment=False)
        augmented = images_per_second(size, depth, steps, augment=True)
        rows.append({"px": size, "depth": depth, "without": plain, "with": augmented, "slower": 1 - augmented / plain})
    return {"backend": keras.backend.backend(), "rows": rows}


def main() -> None:
    results = measure_each_backend(__file__, measure_this_backend, "train_step.json")
    print("| backend | px | depth | images/s without augmentation | with flip + rotation 20° | slower by |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        for row in result["rows"]:
            print(f"| {result['backend']} | {row['px']} | {row['depth']} | {row['without']:.1f} | {row['with']:.1f} | {row['slower']:.1%} |")


if __name__ == "__main__":
    main()
