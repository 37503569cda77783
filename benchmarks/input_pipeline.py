"""Images per second of the training input pipeline at 224 px, against two references, in one run.

1. carclf's `tf.data` pipeline: decode, bounding-box crop, resize, flip, rotation up to 20°,
   ResNet50 preprocessing, batching, parallel map and prefetch.
2. The original project's way: Keras' legacy `ImageDataGenerator.flow_from_dataframe` with
   `horizontal_flip=True, rotation_range=20` (no crop: it cannot crop to a box).
3. Decode + resize alone in `tf.data` (the floor any JPEG pipeline pays).

All three read the same few hundred JPEGs of 600-800 x 400-520 px that the script generates.
Targets on a 2-core machine: (1) at least 3.5x (2), and at least 0.45 of (3).

    python benchmarks/input_pipeline.py [--images 300] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: E402

from carclf.config import DataConfig  # noqa: E402
from carclf.data.annotations import read_devkit_annotations  # noqa: E402
from carclf.data.pipeline import make_dataset  # noqa: E402
from carclf.data.splits import rows_for  # noqa: E402
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars  # noqa: E402

SIZE = 224
BATCH = 32


def images_per_second(batches, count: int, epochs: int) -> float:
    """Iterate `epochs` passes of `batches()` (a fresh iterator each pass) after one warm-up batch."""
    next(iter(batches()))
    started = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for images, _labels in batches():
            seen += len(images)
            if seen >= count * epochs:
                break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    per_class = max(1, args.images // 10)
    root = Path(tempfile.mkdtemp(prefix="carclf-bench-"))
    spec = SyntheticSpec(train_per_class=per_class, test_per_class=1, width_range=(600, 800), height_range=(400, 520), seed=11)
    generate_synthetic_cars(root, spec)
    rows = rows_for(read_devkit_annotations(root), "train")
    count = len(rows)
    print(f"{count} JPEGs of 600-800 x 400-520 px, {SIZE} px output, batches of {BATCH}, {os.cpu_count()} CPUs")

    data = DataConfig(image_size=SIZE, crop_to_bbox=True, horizontal_flip=True, rotation_degrees=20)
    carclf_rate = images_per_second(lambda: make_dataset(rows, data, BATCH, training=True), count, args.epochs)

    frame = pd.DataFrame({"path": rows["path"].astype(str).to_numpy(), "label": rows["label"].astype(str).to_numpy()})
    generator = ImageDataGenerator(horizontal_flip=True, rotation_range=20, preprocessing_function=keras.applications.resnet50.preprocess_input)

    def legacy_batches():
        flow = generator.flow_from_dataframe(frame, x_col="path", y_col="label", target_size=(SIZE, SIZE), batch_size=BATCH,
                                             class_mode="sparse", shuffle=True, validate_filenames=False)
        return (flow[i] for i in range(len(flow)))

    legacy_rate = images_per_second(legacy_batches, count, args.epochs)

    def decode_resize():
        paths = tf.data.Dataset.from_tensor_slices(rows["path"].to_numpy(dtype=str))
        images = paths.map(lambda p: tf.image.resize(tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False), (SIZE, SIZE)),
                           num_parallel_calls=tf.data.AUTOTUNE)
        return images.batch(BATCH).map(lambda x: (x, 0)).prefetch(tf.data.AUTOTUNE)

    floor_rate = images_per_second(decode_resize, count, args.epochs)

    print(f"carclf tf.data (crop, flip, rotate, preprocess): {carclf_rate:8.1f} images/s")
    print(f"legacy ImageDataGenerator (flip, rotate):        {legacy_rate:8.1f} images/s")
    print(f"decode + resize alone (tf.data):                 {floor_rate:8.1f} images/s")
    print(f"ratio carclf / ImageDataGenerator: {carclf_rate / legacy_rate:.2f}x  (target >= 3.5)")
    print(f"ratio carclf / decode + resize:    {carclf_rate / floor_rate:.2f}   (target >= 0.45)")


if __name__ == "__main__":
    main()
