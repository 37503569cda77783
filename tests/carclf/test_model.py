"""The classifier: uint8 input, unfreeze depth, the optimizer's decay and variables, the weights options."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from carclf.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from carclf.model import (
    RESIDUAL_BLOCKS,
    DecayingSGD,
    WeightsError,
    build_backbone,
    build_classifier,
    compile_classifier,
    current_learning_rate,
    dtype_policy,
)
from carclf.weights import check_weights_file

DATA = DataConfig(image_size=32)


def _trainable_blocks(model):
    backbone = model.get_layer("resnet50")
    blocks = {layer.name.rsplit("_", 2)[0] for layer in backbone.layers if layer.trainable and layer.weights and "block" in layer.name}
    stem = any(layer.trainable and layer.weights for layer in backbone.layers if layer.name.startswith("conv1_"))
    return blocks, stem


@pytest.mark.parametrize("depth", [0, 1, 3, 16])
def test_unfreeze_depth_counts_residual_blocks_from_the_top(depth):
    model = build_classifier(5, DATA, ModelConfig(weights="none"), unfreeze_depth=depth)
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
        build_classifier(3, DATA, ModelConfig(weights="none"), unfreeze_depth=depth)


def test_model_takes_stored_uint8_images_and_gives_float32_probabilities():
    model = build_classifier(7, DATA, ModelConfig(weights="none"), unfreeze_depth=0)
    assert model.input.dtype == "uint8"
    out = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert out.shape == (2, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_mixed_precision_keeps_augmentation_preprocessing_and_softmax_in_float32():
    model = build_classifier(3, DATA, ModelConfig(weights="none"), 0, precision="mixed_bfloat16")
    assert model.get_layer("resnet50").layers[2].compute_dtype == "bfloat16"
    for name in ("augmentation", "preprocessing", "classes"):
        assert model.get_layer(name).compute_dtype == "float32", name
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_learning_rate_decay_matches_legacy_formula():
    model = compile_classifier(build_classifier(3, DATA, ModelConfig(weights="none"), 0), TrainConfig(learning_rate=0.005, lr_decay=1e-4))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    for step in (0, 1, 250, 10_000):
        optimizer.iterations.assign(step)
        assert current_learning_rate(model) == pytest.approx(0.005 / (1 + 1e-4 * step), rel=1e-6)


def test_rate_decay_and_momentum_are_variables_of_the_optimizer():
    """Values, not constants in the compiled step: trials with other values reuse the compiled program."""
    optimizer = DecayingSGD(0.01, decay=0.001, momentum=0.8)
    names = {variable.name for variable in optimizer.variables}
    assert {"learning_rate", "decay", "momentum_rate"} <= names
    restored = DecayingSGD.from_config(optimizer.get_config())
    assert float(restored.decay.numpy()) == pytest.approx(0.001) and float(restored.momentum_rate.numpy()) == pytest.approx(0.8)


def test_sgd_update_with_momentum():
    variable = keras.Variable(np.array([1.0], np.float32))
    optimizer = DecayingSGD(0.1, decay=0.0, momentum=0.5)
    for _ in range(2):
        optimizer.apply_gradients([(np.array([1.0], np.float32), variable)])
    # velocity: -0.1, then 0.5 * -0.1 - 0.1 = -0.15; weight: 1 - 0.1 - 0.15
    assert float(variable.numpy()[0]) == pytest.approx(0.75)


def _save_legacy_h5(model, path):
    """The legacy HDF5 layout of Keras' own downloadable ResNet50 weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.mark.parametrize("name", ["resnet50_notop.weights.h5", "resnet50_notop.h5"])
def test_local_weights_file_is_checked_and_loaded(tmp_path, name):
    source = build_backbone(32, "none")
    path = tmp_path / name
    source.save_weights(path) if name.endswith(".weights.h5") else _save_legacy_h5(source, path)
    assert check_weights_file(path) == path
    model = build_classifier(3, DATA, ModelConfig(weights=str(path)), unfreeze_depth=0)
    for mine, theirs in zip(model.get_layer("resnet50").weights, source.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.h5: weights file not found"):
        build_backbone(32, str(tmp_path / "nowhere.h5"))
    with pytest.raises(WeightsError, match="nowhere.h5: weights file not found"):
        check_weights_file(tmp_path / "nowhere.h5")


def test_wrong_weights_file_is_named_before_any_model_is_built(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(WeightsError, match=r"other\.weights\.h5: holds 2 weight arrays; ResNet50 without its top has 318"):
        check_weights_file(tmp_path / "other.weights.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(WeightsError, match=r"text\.h5: not a Keras weights file"):
        check_weights_file(tmp_path / "text.h5")


def _small_model(optimizer) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="out")])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_the_optimizer_state_survives_a_saved_and_reloaded_model(tmp_path):
    """Velocities, step count, rate, decay and momentum: a reloaded .keras model trains on from where it was."""
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    model = _small_model(DecayingSGD(0.05, decay=0.01, momentum=0.7))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(reloaded.optimizer, DecayingSGD)
    before, after = model.optimizer.variables, reloaded.optimizer.variables
    assert len(before) == len(after) and sum("velocity" in v.name for v in after) == 4
    for one, other in zip(before, after):
        np.testing.assert_allclose(ops.convert_to_numpy(other), ops.convert_to_numpy(one), err_msg=one.name)
    assert int(ops.convert_to_numpy(reloaded.optimizer.iterations)) == 4
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    reloaded.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for one, other in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_allclose(one, other, rtol=1e-6)


def test_the_decay_applies_through_loss_scaling_under_mixed_precision():
    """Keras wraps the optimizer in a LossScaleOptimizer under mixed float16; the inner one still steps and decays.
    (Loss scaling skips the steps whose scaled gradients overflow, as it lowers its scale: Keras 3.12 skips the first.)"""
    with dtype_policy("mixed_float16"):
        model = _small_model(DecayingSGD(0.1, decay=0.5, momentum=0.9))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = model.get_weights()
    model.fit(np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32), batch_size=1, epochs=1, verbose=0)
    steps = int(ops.convert_to_numpy(model.optimizer.inner_optimizer.iterations))
    assert 1 <= steps <= 8
    assert current_learning_rate(model) == pytest.approx(0.1 / (1 + 0.5 * steps), rel=1e-6)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert any(not np.allclose(one, other) for one, other in zip(before, model.get_weights()))
