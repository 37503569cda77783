"""Transfer learning on the demo data: the synthetic pretrained backbone against random weights, and
head-only training on cached features against through the frozen network.

    python benchmarks/transfer.py

Synthetic cars of the demo's kind (10 classes, 190 training and 50 validation images, 32 px: the demo's
data before 2026-12-06), the demo's pretrained backbone (built first if it is not cached), 4 epochs, batch 32, learning rate 0.01, on
this process's Keras backend. For unfreeze depth 0, 3 and 16: the best validation accuracy from the
pretrained backbone and from random weights. Then a head trained on cached features (4 views) and
the same head trained through the frozen network: accuracy and seconds. Prints markdown tables and
writes `transfer.json` in the current folder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import keras

from carclf.config import DataConfig, ModelConfig, RunSettings, TrainConfig
from carclf.data.sources import prepare_dataset
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
from carclf.features import build_head_features
from carclf.pretrained import synthetic_backbone
from carclf.runtime import configure_process
from carclf.train import TrainingData, train_classifier

EPOCHS = 4


def run(dataset, settings: RunSettings, features=None) -> tuple[float, float]:
    """The best validation accuracy over the epochs, and the seconds training took."""
    configure_process(None, seed=0)
    accuracies = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: accuracies.append(logs["val_accuracy"]))
    started = time.perf_counter()
    train_classifier(TrainingData(dataset.index, dataset.store, features), settings, callbacks=[callback])
    return max(accuracies), time.perf_counter() - started


def main() -> None:
    configure_process(None, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        root = generate_synthetic_cars(Path(folder) / "cars", SyntheticSpec(train_per_class=24, test_per_class=8))
        data = DataConfig(format="devkit", root=str(root), image_size=32, cache_dir=str(Path(folder) / "cache"))
        dataset = prepare_dataset(data)
        backbone = synthetic_backbone(RunSettings(data=DataConfig(image_size=32), train=TrainConfig(precision="float32")))

        def settings(weights: str, depth: int, views: int = 0) -> RunSettings:
            return RunSettings(data=data, model=ModelConfig(weights=weights, dropout=0.2),
                               train=TrainConfig(epochs=EPOCHS, batch_size=32, learning_rate=0.01, lr_decay=1e-4,
                                                 unfreeze_depth=depth, feature_views=views, precision="float32"))

        depths = []
        for depth in (0, 3, 16):
            pretrained, _ = run(dataset, settings(str(backbone), depth))
            scratch, _ = run(dataset, settings("none", depth))
            depths.append({"depth": depth, "pretrained": pretrained, "scratch": scratch})
        head = settings(str(backbone), 0, views=4)
        started = time.perf_counter()
        features = build_head_features(dataset.index, dataset.store, head)
        build_seconds = time.perf_counter() - started
        cached, cached_seconds = run(dataset, head, features)
        network, network_seconds = run(dataset, head)
    results = {"depths": depths, "head": {"cached": cached, "cached_s": cached_seconds, "features_build_s": build_seconds,
                                          "network": network, "network_s": network_seconds}}
    Path("transfer.json").write_text(json.dumps(results, indent=2))
    print(f"best validation accuracy after {EPOCHS} epochs\n")
    print("| unfreeze depth | pretrained (synthetic shapes) | random weights |")
    print("| --- | --- | --- |")
    for row in depths:
        print(f"| {row['depth']} | {row['pretrained']:.2f} | {row['scratch']:.2f} |")
    head = results["head"]
    print("\n| head only, depth 0 | best validation accuracy | seconds for the epochs |")
    print("| --- | --- | --- |")
    print(f"| cached features (4 views, built once in {head['features_build_s']:.1f} s) | {head['cached']:.2f} | {head['cached_s']:.1f} |")
    print(f"| through the frozen network | {head['network']:.2f} | {head['network_s']:.1f} |")


if __name__ == "__main__":
    main()
