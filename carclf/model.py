"""The ResNet50 transfer-learning classifier and its optimizer, as in Keras' fine-tuning guide.

The model takes the stored uint8 crop: augmentation (training only) and ResNet50's preprocessing
are its first layers (`carclf.layers`), so a saved model needs nothing of carclf's beside it.

A pretrained backbone keeps its BatchNorm layers frozen (`trainable = False`, which Keras runs in
inference mode) in every block, unfrozen ones included, so fine-tuning never drifts the statistics
the weights were trained with: the aim of Keras' fine-tuning guide, which calls the backbone with
`training=False`. That call alone does not do it in Keras 3 (3.15, measured: a nested model called
with `training=False` inside a functional model still updates its moving statistics in `fit`). A
randomly initialised backbone (`weights = "none"`) has no statistics to protect, so its BatchNorm
layers train normally, with a momentum of 0.9 so their moving statistics settle within a few dozen
steps on a small dataset (at Keras' 0.99, or frozen, validation activations blow up through 50
unnormalised layers). A global-average-pooling, dropout and Dense
head gives one output per class; the Dense layer and its softmax stay float32 under mixed
precision, so the loss and the top-5 metric see float32 probabilities.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
from keras import ops

from carclf import layers  # the module, not its names: carclf.layers may still be loading (see carclf/__init__.py)
from carclf.config import DataConfig, ModelConfig, TrainConfig, check_unfreeze_depth

BACKBONE_NAME = "resnet50"
# ResNet50's 16 residual blocks, bottom to top: conv2 has 3, conv3 4, conv4 6, conv5 3.
RESIDUAL_BLOCKS = [f"conv{stage}_block{block}" for stage, count in ((2, 3), (3, 4), (4, 6), (5, 3)) for block in range(1, count + 1)]
RANDOM_INIT_BN_MOMENTUM = 0.9
FEATURE_SIZE = 2048  # ResNet50's pooled output
_BLOCK_OF_LAYER = re.compile(r"^(conv\d_block\d+)_")


class WeightsError(RuntimeError):
    """The backbone weights cannot be obtained or do not fit."""


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under Keras' dtype policy `name` ("float32", "mixed_bfloat16", ...), then restore
    the previous one: a layer keeps the policy it was built with."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_backbone(image_size: int, weights: str) -> keras.Model:
    """ResNet50 without its top: `weights` is "none" or a local `.h5` / `.weights.h5` file.

    Names such as "imagenet" are turned into files once per search, before any trial starts
    (`carclf.weights.resolve_weights`).
    """
    shape = (image_size, image_size, 3)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape, name=BACKBONE_NAME)
    if weights.lower() == "none":
        return backbone
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (model.weights must be 'imagenet', 'synthetic', 'none' or a file)")
    try:
        backbone.load_weights(path)
    except Exception as error:  # shape mismatches and format errors come as several types
        raise WeightsError(f"{path}: does not hold ResNet50 (no top) weights: {error}") from None
    return backbone


def set_unfreeze_depth(backbone: keras.Model, unfreeze_depth: int, *, pretrained: bool) -> None:
    """Make the top `unfreeze_depth` residual blocks trainable (0: none, 16: the whole backbone).

    At 16 the stem (conv1) is unfrozen too, so "every block" means full fine-tuning. In a
    `pretrained` backbone BatchNorm stays frozen everywhere (see the module docstring).
    """
    check_unfreeze_depth(unfreeze_depth)
    trainable_blocks = set(RESIDUAL_BLOCKS[len(RESIDUAL_BLOCKS) - unfreeze_depth :])
    backbone.trainable = unfreeze_depth > 0
    for layer in backbone.layers:
        match = _BLOCK_OF_LAYER.match(layer.name)
        if pretrained and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif match:
            layer.trainable = match.group(1) in trainable_blocks
        else:
            layer.trainable = unfreeze_depth == len(RESIDUAL_BLOCKS)


def pooled_features(images, backbone: keras.Model):
    """Preprocessing, the backbone and global average pooling: what the head sees of float32 pixels."""
    return keras.layers.GlobalAveragePooling2D(name="pool")(backbone(layers.ResNetPreprocessing(name="preprocessing")(images)))


def build_classifier(num_classes: int, data: DataConfig, model: ModelConfig, unfreeze_depth: int, seed: int = 0,
                     precision: str = "float32") -> keras.Model:
    """uint8 image → flip/rotation (training only) → preprocessing → ResNet50 → pooling → dropout → softmax.

    See the module docstring on BatchNorm. `seed` seeds the augmentation.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    size = data.image_size
    with dtype_policy(precision):
        backbone = build_backbone(size, model.weights)
        set_unfreeze_depth(backbone, unfreeze_depth, pretrained=model.pretrained)
        if not model.pretrained:
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = RANDOM_INIT_BN_MOMENTUM
        inputs = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
        augmented = layers.RandomFlipRotation(data.rotation_degrees, data.horizontal_flip, seed=seed, name="augmentation")(inputs)
        pooled = pooled_features(augmented, backbone)
        return keras.Model(inputs, classification_head(pooled, num_classes, model.dropout, seed), name="car_classifier")


def classification_head(pooled, num_classes: int, dropout: float, seed: int):
    """Dropout and a float32 softmax Dense layer on pooled features: the part every configuration trains.

    Seeded, so the head starts alike whether it trains on cached features or through the network.
    """
    pooled = keras.layers.Dropout(dropout, seed=seed, name="dropout")(pooled)
    initializer = keras.initializers.GlorotUniform(seed=seed)
    return keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=initializer, dtype="float32", name="classes")(pooled)


def build_head(num_classes: int, model: ModelConfig, seed: int = 0) -> keras.Model:
    """The classifier's head alone, trained on cached pooled features (see `carclf.features`)."""
    inputs = keras.Input((FEATURE_SIZE,), name="features")
    return keras.Model(inputs, classification_head(inputs, num_classes, model.dropout, seed), name="car_classifier_head")


def build_feature_extractor(data: DataConfig, model: ModelConfig, precision: str = "float32") -> keras.Model:
    """float32 pixels (already augmented) → pooled features, exactly as a depth-0 classifier computes them."""
    with dtype_policy(precision):
        backbone = build_backbone(data.image_size, model.weights)
        backbone.trainable = False
        inputs = keras.Input((data.image_size, data.image_size, 3), name="pixels")
        return keras.Model(inputs, pooled_features(inputs, backbone), name="features")


@keras.saving.register_keras_serializable(package="carclf")
class DecayingSGD(keras.optimizers.Optimizer):
    """SGD with momentum and legacy Keras' decay, lr / (1 + decay * step), stepped every batch.

    The rate (Keras' own `learning_rate` variable), the decay and the momentum are optimizer variables
    rather than numbers, so a compiled train step takes them as inputs: trials that differ only in
    these values run the same compiled program, and JAX's persistent compilation cache serves a later
    trial without compiling again. Written on Keras' public optimizer interface (`add_variable`,
    `add_variable_from_reference`, `update_step`): the decay is applied in `update_step`, and each
    weight's velocity is found by the weight's `path`.
    """

    def __init__(self, learning_rate: float = 0.01, decay: float = 0.0, momentum: float = 0.9,
                 name: str = "decaying_sgd", **kwargs):
        super().__init__(learning_rate=float(learning_rate), name=name, **kwargs)
        self.decay = self.add_variable((), initializer=keras.initializers.Constant(float(decay)), name="decay")
        self.momentum_rate = self.add_variable((), initializer=keras.initializers.Constant(float(momentum)), name="momentum_rate")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(variable, "velocity") for variable in variables]
        self.velocity_of = {variable.path: index for index, variable in enumerate(variables)}

    def decayed_learning_rate(self):
        """The rate applied at the current step: learning_rate / (1 + decay * step)."""
        return self.learning_rate / (1.0 + self.decay * ops.cast(self.iterations, "float32"))

    def update_step(self, gradient, variable, learning_rate):
        rate = ops.cast(self.decayed_learning_rate(), variable.dtype)  # `learning_rate` is the undecayed rate
        momentum = ops.cast(self.momentum_rate, variable.dtype)
        velocity = self.velocities[self.velocity_of[weight_path(variable)]]
        self.assign(velocity, velocity * momentum - ops.cast(gradient, variable.dtype) * rate)
        self.assign_add(variable, velocity)

    def get_config(self):
        return {**super().get_config(), "decay": float(ops.convert_to_numpy(self.decay)),
                "momentum": float(ops.convert_to_numpy(self.momentum_rate))}


def weight_path(variable) -> str:
    """A weight's path (`dense/kernel`): Keras' variables have one; on TensorFlow, `update_step` is handed the
    `tf.Variable` beneath, which Keras names after the path (`dense/kernel:0`)."""
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name.removesuffix(":0")


@keras.saving.register_keras_serializable(package="carclf")
class SparseCrossentropyWithSmoothing(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing, which Keras' sparse loss lacks."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_crossentropy_smoothed", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_classifier(model: keras.Model, train: TrainConfig, learning_rate: float | None = None) -> keras.Model:
    """SGD with momentum and inverse-time decay at `learning_rate` (default `train.learning_rate`);
    accuracy and top-5 accuracy. Keras wraps the optimizer for loss scaling under mixed float16."""
    loss = (
        keras.losses.SparseCategoricalCrossentropy()
        if train.label_smoothing == 0
        else SparseCrossentropyWithSmoothing(train.label_smoothing)
    )
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=DecayingSGD(learning_rate or train.learning_rate, decay=train.lr_decay, momentum=train.momentum),
        loss=loss,
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5_accuracy"),
        ],
    )
    return model


def set_optimizer_values(model: keras.Model, learning_rate: float, decay: float, momentum: float) -> None:
    """Give a compiled model's `DecayingSGD` a run's rate, decay and momentum: variables of its compiled
    step, so a model reused from `carclf.compiled_models` trains at the new values without recompiling."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
    optimizer.learning_rate = float(learning_rate)  # Keras' setter assigns the variable
    optimizer.decay.assign(float(decay))
    optimizer.momentum_rate.assign(float(momentum))


def current_learning_rate(model: keras.Model) -> float:
    """The learning rate the optimizer applies at its current step."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
    return float(ops.convert_to_numpy(optimizer.decayed_learning_rate()))


def layer_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Each layer's weights by layer name, as host arrays (a copy, which later training leaves alone)."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def set_layer_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Give every layer of `model` named in `weights` those weights: the layers a head shares with its
    classifier, or every layer of a classifier of the same shape."""
    for layer in model.layers:
        if layer.name in weights and layer.weights:
            layer.set_weights(weights[layer.name])


def transfer_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer `target` shares by name with `source` (the head after a
    head-only phase, or a backbone), so a second phase starts where the first ended."""
    set_layer_weights(target, layer_weights(source))
