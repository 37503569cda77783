"""The classifier: unfreeze depth, the optimizer's decay schedule, and the weights options."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from carclf.config import ConfigError, ModelConfig, TrainConfig
from carclf.model import RESIDUAL_BLOCKS, WeightsError, build_backbone, build_classifier, compile_classifier, learning_rate_schedule


def _trainable_blocks(model):
    backbone = model.get_layer("resnet50")
    blocks = {layer.name.rsplit("_", 2)[0] for layer in backbone.layers if layer.trainable and layer.weights and "block" in layer.name}
    stem = any(layer.trainable and layer.weights for layer in backbone.layers if layer.name.startswith("conv1_"))
    return blocks, stem


@pytest.mark.parametrize("depth", [0, 1, 3, 16])
def test_unfreeze_depth_counts_residual_blocks_from_the_top(depth):
    model = build_classifier(5, 32, ModelConfig(weights="none"), unfreeze_depth=depth)
    blocks, stem = _trainable_blocks(model)
    expected = {b.split("_")[0] + "_" + b.split("_")[1] for b in RESIDUAL_BLOCKS[16 - depth:]}
    assert {b.split("_")[0] + "_" + b.split("_")[1] for b in blocks} == expected
    assert stem == (depth == 16)
    assert model.get_layer("classes").trainable
    head_weights = sum(int(np.prod(w.shape)) for w in model.get_layer("classes").trainable_weights)
    if depth == 0:
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == head_weights


def test_depth_order_is_top_first():
    assert RESIDUAL_BLOCKS[-1] == "conv5_block3" and RESIDUAL_BLOCKS[0] == "conv2_block1" and len(RESIDUAL_BLOCKS) == 16


@pytest.mark.parametrize("depth", [-1, 17])
def test_unfreeze_depth_outside_range_is_an_error(depth):
    with pytest.raises(ConfigError, match=r"unfreeze_depth must be in 0\.\.16"):
        build_classifier(3, 32, ModelConfig(weights="none"), unfreeze_depth=depth)


def test_head_shape_and_softmax():
    model = build_classifier(7, 32, ModelConfig(weights="none"), unfreeze_depth=0)
    out = model.predict(np.zeros((2, 32, 32, 3)), verbose=0)
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_learning_rate_decay_matches_legacy_formula():
    train = TrainConfig(learning_rate=0.005, lr_decay=1e-4)
    schedule = learning_rate_schedule(train)
    for step in (0, 1, 250, 10_000):
        assert float(schedule(step)) == pytest.approx(0.005 / (1 + 1e-4 * step), rel=1e-6)


def test_optimizer_is_sgd_with_momentum():
    model = compile_classifier(build_classifier(3, 32, ModelConfig(weights="none"), 0), TrainConfig(momentum=0.8))
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.8)


def _save_legacy_h5(model, path):
    """The legacy HDF5 layout of Keras' own downloadable ResNet50 weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.mark.parametrize("name", ["resnet50_notop.weights.h5", "resnet50_notop.h5"])
def test_local_weights_file_is_loaded(tmp_path, name):
    source = build_backbone(32, "none")
    path = tmp_path / name
    source.save_weights(path) if name.endswith(".weights.h5") else _save_legacy_h5(source, path)
    model = build_classifier(3, 32, ModelConfig(weights=str(path)), unfreeze_depth=0)
    for mine, theirs in zip(model.get_layer("resnet50").weights, source.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.h5: weights file not found"):
        build_backbone(32, str(tmp_path / "nowhere.h5"))


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras warns for every layer it cannot match
def test_wrong_weights_file_is_named(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(WeightsError, match="other.weights.h5: does not hold ResNet50"):
        build_backbone(32, str(tmp_path / "other.weights.h5"))
