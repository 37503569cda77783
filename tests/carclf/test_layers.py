"""The in-model augmentation and preprocessing layers: exact pixels, seeds, both backends alike."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from carclf.layers import IMAGENET_BGR_MEANS, RandomFlipRotation, ResNetPreprocessing, flip_and_rotate

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 12, 10, 3)).astype(np.uint8)
ANGLES = np.array([0.3, -0.35, 0.1], dtype=np.float32)
FLIPS = np.array([True, False, True])
CROSS_BACKEND = """
import sys, numpy as np
from carclf.layers import flip_and_rotate
from keras import ops
images = np.random.default_rng(0).integers(0, 256, (3, 12, 10, 3)).astype(np.uint8)
np.save(sys.argv[1], ops.convert_to_numpy(flip_and_rotate(images, np.array([0.3, -0.35, 0.1], np.float32), np.array([True, False, True]))))
"""


def _apply(angles, flips, images=IMAGES):
    return keras.ops.convert_to_numpy(flip_and_rotate(images, angles, flips))


def test_no_rotation_and_no_flip_give_the_input_back_exactly():
    np.testing.assert_array_equal(_apply(np.zeros(3), np.zeros(3, bool)), IMAGES)


def test_flip_mirrors_left_right():
    np.testing.assert_array_equal(_apply(np.zeros(3), np.ones(3, bool)), IMAGES[:, :, ::-1])


def test_quarter_turn_is_numpy_rot90_on_square_images():
    square = IMAGES[:, :10, :10]
    np.testing.assert_array_equal(_apply(np.full(3, math.pi / 2), np.zeros(3, bool), square), np.rot90(square, 1, axes=(1, 2)))


def test_uncovered_corners_mirror_the_image():
    flat = np.zeros((1, 20, 20, 3), np.uint8)
    flat[:, :5] = 255  # a bright top band
    turned = _apply(np.array([math.pi / 4]), np.zeros(1, bool), flat)
    # The top-left corner now comes from 3.9 pixels above the top edge: mirrored, that is inside the band.
    assert turned[0, 0, 0, 0] > 200
    assert turned.min() >= 0 and turned.max() <= 255


def test_layer_is_seeded_and_acts_only_in_training():
    first = RandomFlipRotation(20, True, seed=5)
    again = RandomFlipRotation(20, True, seed=5)
    a = keras.ops.convert_to_numpy(first(IMAGES, training=True))
    np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(again(IMAGES, training=True)))
    assert not np.array_equal(a, keras.ops.convert_to_numpy(first(IMAGES, training=True)))  # the next batch differs
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first(IMAGES, training=False)), IMAGES.astype(np.float32))


def test_preprocessing_is_resnet50s():
    out = keras.ops.convert_to_numpy(ResNetPreprocessing()(IMAGES))
    expected = IMAGES[..., ::-1].astype(np.float32) - np.array(IMAGENET_BGR_MEANS, np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(out, keras.applications.resnet50.preprocess_input(IMAGES.astype(np.float32)), atol=1e-3)


def test_both_backends_give_the_same_pixels(tmp_path):
    outputs = {}
    for backend in ("tensorflow", "jax"):
        pytest.importorskip(backend)
        path = tmp_path / f"{backend}.npy"
        result = subprocess.run([sys.executable, "-c", CROSS_BACKEND, str(path)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "KERAS_BACKEND": backend})
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[backend] = np.load(path)
    assert np.abs(outputs["tensorflow"] - outputs["jax"]).max() <= 1.0  # within 1/255 of the range
    np.testing.assert_allclose(outputs[keras.backend.backend()], _apply(ANGLES, FLIPS), atol=1e-4)
