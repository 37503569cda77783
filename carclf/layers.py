"""The model's own input layers: augmentation and ResNet50's preprocessing, on uint8 images.

They sit at the front of the classifier, so the train step compiles them with the network (XLA
on GPUs, on any Keras backend) and a saved `.keras` model takes the stored uint8 crop directly.

Keras' stock `RandomRotation` will not do here. On TensorFlow it runs `ImageProjectiveTransform`,
which has no XLA kernel and turns XLA off for the whole model; on JAX it goes through
`jax.scipy.ndimage.map_coordinates` over (height, width, channel), eight gathers per output value:
on an H100 it cut training from 4,639 to 98 images/s. `flip_and_rotate` instead computes, for each
output pixel, where it comes from, and gathers the four neighbours of that point with all three
channels at once: four row gathers over a flattened batch, which XLA turns into plain memory reads.

The coordinates are computed in float32 whatever the dtype policy: in bfloat16 (8 bits of mantissa)
pixel 223 and pixel 223.5 are the same number, and a rotation would snap to a coarse grid.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from carclf.compilation import xla_compiled

# ResNet50's ImageNet weights expect BGR channels with these means subtracted (Keras' "caffe" mode).
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


def _source_coordinate(offset, size: int):
    """An offset from the centre as a pixel coordinate in [0, size - 1], mirrored at the edges.

    Mirroring (TensorFlow's `fill_mode="reflect"`) fills the corners a rotation uncovers with the
    nearby image rather than black wedges a model could learn to look for. A rotation about the
    centre never reaches further than 0.21 * size beyond an edge, so one reflection at each edge
    (two `abs`, no `mod`) is enough. Clipping to the outermost pixel centres keeps the edge pixel
    for the half pixel beyond it, as bilinear sampling with repeated edges would.
    """
    shifted = offset + size / 2.0  # 0 and `size` are the image's outer edges
    mirrored = size - ops.abs(size - ops.abs(shifted))
    return ops.clip(mirrored - 0.5, 0.0, size - 1.0)


def _lerp(start, stop, weight):
    return start + (stop - start) * weight


def flip_and_rotate(images, angles, flips):
    """Mirror, then rotate each image about its centre; bilinear, reflected borders.

    `images`: (n, h, w, c), any dtype (uint8 from the store). `angles`: (n,) radians; positive
    turns the picture counter-clockwise, as `numpy.rot90` does. `flips`: (n,) booleans, True
    mirrors left-right. Returns float32 (n, h, w, c) on the input's scale (0..255 for uint8). An
    angle of 0 without a flip gives back the input exactly.
    """
    count = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    angles = ops.cast(angles, "float32")
    mirror = ops.where(ops.cast(flips, "bool"), -1.0, 1.0)
    # Output pixel (row, column) as an offset from the image's centre, mirrored where asked.
    dy = ops.reshape(ops.arange(height, dtype="float32") - (height - 1) / 2.0, (1, height, 1))
    dx = ops.reshape(ops.arange(width, dtype="float32") - (width - 1) / 2.0, (1, 1, width)) * ops.reshape(mirror, (-1, 1, 1))
    cos = ops.reshape(ops.cos(angles), (-1, 1, 1))
    sin = ops.reshape(ops.sin(angles), (-1, 1, 1))
    # Where each output pixel comes from in its input image, (n, h, w) each.
    x = _source_coordinate(cos * dx - sin * dy, width)
    y = _source_coordinate(sin * dx + cos * dy, height)
    x0, y0 = ops.floor(x), ops.floor(y)
    wx, wy = ops.reshape(x - x0, (-1, 1)), ops.reshape(y - y0, (-1, 1))
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    # Rows of the batch flattened to (n * h * w, c): each gather reads whole pixels, all channels.
    first = ops.reshape(ops.arange(count, dtype="int32") * (height * width), (-1, 1, 1))
    top_left = ops.reshape(first + y0 * width + x0, (-1,))
    right = ops.reshape(ops.minimum(x0 + 1, width - 1) - x0, (-1,))
    down = ops.reshape((ops.minimum(y0 + 1, height - 1) - y0) * width, (-1,))
    pixels = ops.reshape(images, (-1, channels))

    def pixel(rows):
        return ops.cast(ops.take(pixels, rows, axis=0), "float32")

    top = _lerp(pixel(top_left), pixel(top_left + right), wx)
    bottom = _lerp(pixel(top_left + down), pixel(top_left + down + right), wx)
    return ops.reshape(_lerp(top, bottom, wy), (-1, height, width, channels))


# Compiled with XLA on both backends, even where Keras runs the rest of the model without it.
compiled_flip_and_rotate = xla_compiled(flip_and_rotate)


@keras.saving.register_keras_serializable(package="carclf")
class RandomFlipRotation(keras.layers.Layer):
    """Training-time augmentation: a random mirror (p = 0.5) and a rotation within ±`rotation_degrees`.

    Active only when called with `training=True`; at inference it only casts to float32, so the
    saved model sees the stored pixels as they are. Seeded through a `SeedGenerator`, so a fixed
    seed gives the same augmented batches run after run.
    """

    def __init__(self, rotation_degrees: float = 0.0, horizontal_flip: bool = True, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # coordinates in float32 under any policy (module docstring)
        super().__init__(**kwargs)
        self.rotation_degrees = float(rotation_degrees)
        self.horizontal_flip = bool(horizontal_flip)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    @property
    def active(self) -> bool:
        return self.rotation_degrees > 0 or self.horizontal_flip

    def call(self, images, training=None):
        if not training or not self.active:
            return ops.cast(images, "float32")
        count = ops.shape(images)[:1]
        limit = self.rotation_degrees * math.pi / 180.0
        angles = keras.random.uniform(count, -limit, limit, seed=self.seed_generator) if limit > 0 else ops.zeros(count)
        flips = keras.random.uniform(count, seed=self.seed_generator) < 0.5 if self.horizontal_flip else ops.zeros(count, "bool")
        return compiled_flip_and_rotate(images, angles, flips)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation_degrees": self.rotation_degrees,
                "horizontal_flip": self.horizontal_flip, "seed": self.seed}


@keras.saving.register_keras_serializable(package="carclf")
class ResNetPreprocessing(keras.layers.Layer):
    """What ResNet50's ImageNet weights expect of 0..255 RGB pixels: BGR order, ImageNet means subtracted.

    Kept in float32 under mixed precision: in bfloat16 the difference of two numbers near 128
    keeps only about 2 bits after the point.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True

    def call(self, images):
        bgr = ops.flip(ops.cast(images, "float32"), axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape
