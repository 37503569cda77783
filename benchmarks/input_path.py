"""The input path alone at 224 px: decoding into the store, uint8 batches out of it, in-model augmentation.

    python benchmarks/input_path.py            # both Keras backends, side by side (each in its own process)
    python benchmarks/input_path.py --backend  # this process's backend only (used by the line above)

On synthetic car photos of 600-800 x 400-520 px with boxes (the size of Stanford Cars'):
- the store build (Pillow decode, EXIF, box crop, resize) with 1 and 2 worker threads;
- `TrainingBatches` reading batches of 128 uint8 images from the memory-mapped store (goal: >= 20,000
  images/s: it is a memory copy);
- `flip_and_rotate` (random flip and rotation up to 20 degrees, compiled with XLA as in the model)
  on batches of 64 (goal: >= the 388 images/s of the old tf.data pipeline on this machine).
Prints a markdown table and writes `input_path.json` in the current folder.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from backends import measure_each_backend

GOALS = {"store batches": 20_000, "flip + rotation 20°": 388}


def measure_this_backend() -> dict[str, float]:
    import keras

    from carclf.config import DataConfig
    from carclf.data.batches import TrainingBatches
    from carclf.data.sources import prepare_dataset
    from carclf.data.store import build_image_store, open_image_store
    from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
    from carclf.layers import compiled_flip_and_rotate

    figures: dict[str, float] = {"backend": keras.backend.backend()}
    with tempfile.TemporaryDirectory() as folder:
        root = generate_synthetic_cars(Path(folder) / "cars", SyntheticSpec(train_per_class=40, test_per_class=2,
                                                                           width_range=(600, 800), height_range=(400, 520)))
        data = DataConfig(format="devkit", root=str(root), image_size=224, cache_dir=str(Path(folder) / "cache"))
        dataset = prepare_dataset(data)
        for workers in (1, 2):  # a fresh cache folder each time: a real build, not a reuse
            fresh = dataclasses.replace(data, cache_dir=str(Path(folder) / f"cache{workers}"))
            started = time.perf_counter()
            build_image_store(dataset.index.drop(columns=["store_row"]), fresh, workers=workers)
            figures[f"store build, {workers} thread(s)"] = len(dataset.index) / (time.perf_counter() - started)
        pixels = open_image_store(dataset.store, 224)
        rows = dataset.index["store_row"].to_numpy()
        batches = TrainingBatches(lambda positions, rng: pixels[positions], rows, np.zeros(len(rows)), 128, len(rows) // 128 * 128, 0)
        for step in range(len(batches)):  # warm the page cache
            batches[step]
        started, images = time.perf_counter(), 0
        for _ in range(5):
            for step in range(len(batches)):
                images += len(batches[step][0])
            batches.epoch += 1
        figures["store batches"] = images / (time.perf_counter() - started)

        rng = np.random.default_rng(0)
        batch = pixels[rows[:64]]
        angles = rng.uniform(-np.radians(20), np.radians(20), 64).astype(np.float32)
        flips = rng.random(64) < 0.5
        keras.ops.convert_to_numpy(compiled_flip_and_rotate(batch, angles, flips))  # compile
        started = time.perf_counter()
        for _ in range(10):
            out = compiled_flip_and_rotate(batch, angles, flips)
        keras.ops.convert_to_numpy(out)
        figures["flip + rotation 20°"] = 640 / (time.perf_counter() - started)
    return figures


def main() -> None:
    results = measure_each_backend(__file__, measure_this_backend, "input_path.json")
    keys = [key for key in results[0] if key != "backend"]
    print("| images/s at 224 px | " + " | ".join(r["backend"] for r in results) + " | goal |")
    print("| --- |" + " --- |" * (len(results) + 1))
    for key in keys:
        goal = f">= {GOALS[key]:,}" if key in GOALS else ""
        print(f"| {key} | " + " | ".join(f"{r[key]:,.0f}" for r in results) + f" | {goal} |")


if __name__ == "__main__":
    main()
