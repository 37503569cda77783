"""Transfer learning, tested with a pretrained backbone: frozen BatchNorm stays frozen, and a backbone
pretrained on another task fine-tunes better than training from scratch at equal epochs."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from carclf.config import DataConfig, ModelConfig, RunSettings, TrainConfig
from carclf.data.sources import prepare_dataset
from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars
from carclf.model import RESIDUAL_BLOCKS
from carclf.runtime import configure_process
from carclf.train import TrainingData, train_classifier


def _backbone_state(model) -> dict[str, list[np.ndarray]]:
    """Every backbone layer's weights (kernels, BatchNorm scales, offsets and moving statistics)."""
    backbone = model.get_layer("resnet50")
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in backbone.layers if layer.weights}


def _block(layer_name: str) -> str:
    return "_".join(layer_name.split("_")[:2])


@pytest.mark.parametrize("depth", [0, 3])
def test_frozen_blocks_keep_every_weight_and_statistic(tiny_dataset, tiny_settings, synthetic_backbone, depth):
    settings = dataclasses.replace(tiny_settings, model=ModelConfig(weights=str(synthetic_backbone), dropout=0.0))
    settings = settings.with_train(epochs=2, unfreeze_depth=depth, learning_rate=0.01, feature_views=0)
    configure_process(2, seed=0)
    before = None

    class Snapshot(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            nonlocal before
            before = before or _backbone_state(self.model)

    model = train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), settings, callbacks=[Snapshot()])
    after = _backbone_state(model)
    unfrozen = set(RESIDUAL_BLOCKS[len(RESIDUAL_BLOCKS) - depth:])
    for name, weights in before.items():
        layer = model.get_layer("resnet50").get_layer(name)
        if _block(name) not in unfrozen:
            for old, new in zip(weights, after[name]):
                np.testing.assert_array_equal(old, new, err_msg=name)  # frozen: identical, BatchNorm statistics included
        elif isinstance(layer, keras.layers.BatchNormalization):
            # Frozen in unfrozen blocks too: scale, offset and the statistics the backbone was pretrained with.
            for old, new in zip(weights, after[name]):
                np.testing.assert_array_equal(old, new, err_msg=name)
        else:
            assert not np.array_equal(weights[0], after[name][0]), name  # an unfrozen convolution learned


@pytest.fixture(scope="module")
def demo_sized_data(tmp_path_factory):
    """Synthetic cars of the demo's kind, smaller than the demo so the test stays short (10 classes, 190
    training and 50 validation images), decoded at 32 px."""
    folder = tmp_path_factory.mktemp("transfer")
    root = generate_synthetic_cars(folder / "cars", SyntheticSpec(train_per_class=24, test_per_class=8))
    data = DataConfig(format="devkit", root=str(root), image_size=32, cache_dir=str(folder / "cache"))
    return data, prepare_dataset(data)


def _best_validation_accuracy(data, dataset, weights: str, depth: int) -> float:
    settings = RunSettings(data=data, model=ModelConfig(weights=weights, dropout=0.2),
                           train=TrainConfig(epochs=4, batch_size=32, learning_rate=0.01, lr_decay=1e-4, unfreeze_depth=depth,
                                             feature_views=0, precision="float32"))
    configure_process(2, seed=0)
    accuracies = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: accuracies.append(logs["val_accuracy"]))
    train_classifier(TrainingData(dataset.index, dataset.store), settings, callbacks=[callback])
    return max(accuracies)


def test_fine_tuning_from_the_source_task_beats_training_from_scratch(demo_sized_data, synthetic_backbone):
    """Equal epochs (4) on the demo's cars: the synthetic-shapes backbone, top 3 blocks tuned, against a
    randomly initialised network trained whole. 50 validation images: a standard error near 7 points."""
    data, dataset = demo_sized_data
    pretrained = _best_validation_accuracy(data, dataset, str(synthetic_backbone), depth=3)
    scratch = _best_validation_accuracy(data, dataset, "none", depth=16)
    assert pretrained > scratch + 0.2, (pretrained, scratch)
