"""One trial's epoch time with and without the decoded store, and head-only with and without cached features.

1. Epoch time of a trial (unfreeze depth 0, ordinary path) reading JPEGs vs reading the decoded
   store, at 64 and 224 px.
2. A head-only trial at 224 px: the ordinary path (frozen backbone forward every epoch) vs
   training the head on cached frozen features (target: at least 10x faster per epoch). The
   one-off cost of building the store and the features is printed too.

All on the same generated JPEGs of 600-800 x 400-520 px, measured side by side in one run; the
epoch time is the second epoch's (the first pays for graph tracing).

    python benchmarks/trial_speed.py [--images 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from carclf.config import DataConfig, ModelConfig, RunSettings, TrainConfig  # noqa: E402
from carclf.data.sources import index_dataset  # noqa: E402
from carclf.data.store import build_image_store  # noqa: E402
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars  # noqa: E402
from carclf.data.table import class_names  # noqa: E402
from carclf.features import build_head_features, fit_head, load_head_features  # noqa: E402
from carclf.model import build_head, compile_classifier  # noqa: E402
from carclf.runtime import configure_tensorflow  # noqa: E402
from carclf.train import build_model, fit  # noqa: E402


def second_epoch_seconds(history) -> float:
    return history.history["seconds_per_epoch"][-1]


def fresh_model(num_classes: int, settings: RunSettings):
    """A new classifier in a clean Keras session, so no run inherits another's graph state."""
    keras.backend.clear_session()
    return build_model(num_classes, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carclf-trial-bench-"))
    spec = SyntheticSpec(train_per_class=max(2, args.images // 10), test_per_class=1, width_range=(600, 800), height_range=(400, 520), seed=11)
    root = generate_synthetic_cars(work / "cars", spec)
    configure_tensorflow(os.cpu_count(), 0)
    print(f"{args.images} JPEGs of 600-800 x 400-520 px, {os.cpu_count()} CPUs; seconds per epoch (second epoch)")

    for size in (64, 224):
        settings = RunSettings(
            data=DataConfig(format="devkit", root=str(root), image_size=size, validation_fraction=0.2),
            model=ModelConfig(weights="none"),
            train=TrainConfig(epochs=2, batch_size=32, unfreeze_depth=0),
        )
        index = index_dataset(settings.data)
        names = class_names(index)
        started = time.perf_counter()
        store = build_image_store(index, settings.data, work / "cache")
        build_seconds = time.perf_counter() - started
        files = second_epoch_seconds(fit(fresh_model(len(names), settings), index, settings))
        stored = second_epoch_seconds(fit(fresh_model(len(names), settings), index, settings, image_store=store))
        print(f"{size:3d} px  depth 0  JPEG files {files:6.2f} s   decoded store {stored:6.2f} s   "
              f"ratio {files / stored:5.2f}x   (store built once in {build_seconds:.1f} s)")

        if size != 224:
            continue
        started = time.perf_counter()
        features = load_head_features(build_head_features(index, settings, views=4, cache_dir=work / "cache", image_store=store))
        feature_seconds = time.perf_counter() - started
        keras.backend.clear_session()
        head = compile_classifier(build_head(len(names), features["train"].shape[-1], settings.model), settings.train)
        cached = second_epoch_seconds(fit_head(head, features, settings))
        print(f"224 px  head only  ordinary (store) {stored:6.2f} s   cached features {cached:6.3f} s   "
              f"ratio {stored / cached:6.1f}x   (target >= 10; features for 4 views built once in {feature_seconds:.1f} s)")


if __name__ == "__main__":
    main()
