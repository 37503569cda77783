"""The ResNet50 transfer-learning classifier and its optimizer, as in Keras' fine-tuning guide.

A pretrained backbone is called with `training=False` so its BatchNorm layers keep their
ImageNet statistics while fine-tuning; a randomly initialised one (`weights = "none"`) has no
statistics to protect, so its BatchNorm layers train normally, with a momentum of 0.9 so their
moving statistics settle within a few dozen steps on a small dataset (at Keras' 0.99, or frozen,
validation activations blow up through 50 unnormalised layers). A global-average-pooling, dropout and Dense head gives one output
per class.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import ops

from carclf.config import ModelConfig, TrainConfig, check_unfreeze_depth

BACKBONE_NAME = "resnet50"
# ResNet50's 16 residual blocks, bottom to top: conv2 has 3, conv3 4, conv4 6, conv5 3.
RESIDUAL_BLOCKS = [f"conv{stage}_block{block}" for stage, count in ((2, 3), (3, 4), (4, 6), (5, 3)) for block in range(1, count + 1)]
RANDOM_INIT_BN_MOMENTUM = 0.9
_BLOCK_OF_LAYER = re.compile(r"^(conv\d_block\d+)_")


class WeightsError(RuntimeError):
    """The backbone weights cannot be obtained or do not fit."""


def build_backbone(image_size: int, weights: str) -> keras.Model:
    """ResNet50 without its top: `weights` is "imagenet", "none", or a local `.h5`/`.weights.h5` file."""
    shape = (image_size, image_size, 3)
    if weights.lower() == "none":
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape, name=BACKBONE_NAME)
    if weights == "imagenet":
        try:
            return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=shape, name=BACKBONE_NAME)
        except Exception as error:  # Keras raises a bare Exception for a failed download
            raise WeightsError(
                f"could not download the ImageNet weights for ResNet50 ({error}). Without internet, download "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere and set model.weights to its path."
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (model.weights must be 'imagenet', 'none' or a file)")
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape, name=BACKBONE_NAME)
    try:
        backbone.load_weights(path)
    except Exception as error:  # shape mismatches and format errors come as several types
        raise WeightsError(f"{path}: does not hold ResNet50 (no top) weights: {error}") from None
    return backbone


def set_unfreeze_depth(backbone: keras.Model, unfreeze_depth: int) -> None:
    """Make the top `unfreeze_depth` residual blocks trainable (0: none, 16: the whole backbone).

    At 16 the stem (conv1) is unfrozen too, so "every block" means full fine-tuning.
    """
    check_unfreeze_depth(unfreeze_depth)
    trainable_blocks = set(RESIDUAL_BLOCKS[len(RESIDUAL_BLOCKS) - unfreeze_depth :])
    backbone.trainable = unfreeze_depth > 0
    for layer in backbone.layers:
        match = _BLOCK_OF_LAYER.match(layer.name)
        if match:
            layer.trainable = match.group(1) in trainable_blocks
        else:
            layer.trainable = unfreeze_depth == len(RESIDUAL_BLOCKS)


def build_classifier(num_classes: int, image_size: int, model: ModelConfig, unfreeze_depth: int) -> keras.Model:
    """ResNet50 → global average pooling → dropout → softmax Dense (see the module docstring on BatchNorm)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    backbone = build_backbone(image_size, model.weights)
    set_unfreeze_depth(backbone, unfreeze_depth)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    pretrained = model.weights.lower() != "none"
    if not pretrained:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = RANDOM_INIT_BN_MOMENTUM
    features = backbone(inputs, training=False) if pretrained else backbone(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    return keras.Model(inputs, classification_head(pooled, num_classes, model.dropout), name="car_classifier")


def classification_head(pooled, num_classes: int, dropout: float):
    """Dropout and a softmax Dense layer on pooled features: the part every configuration trains."""
    pooled = keras.layers.Dropout(dropout, name="dropout")(pooled)
    return keras.layers.Dense(num_classes, activation="softmax", name="classes")(pooled)


def build_head(num_classes: int, feature_size: int, model: ModelConfig) -> keras.Model:
    """The classifier's head alone, trained on cached pooled features (see `carclf.features`)."""
    inputs = keras.Input((feature_size,), name="features")
    return keras.Model(inputs, classification_head(inputs, num_classes, model.dropout), name="car_classifier_head")


def learning_rate_schedule(train: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Legacy Keras' `decay`: lr / (1 + decay * step), stepped every batch."""
    return keras.optimizers.schedules.InverseTimeDecay(train.learning_rate, decay_steps=1, decay_rate=train.lr_decay)


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


def compile_classifier(model: keras.Model, train: TrainConfig) -> keras.Model:
    """SGD with momentum and inverse-time decay; accuracy and top-5 accuracy."""
    # The stock loss keeps saved models loadable without carclf; smoothing needs our own.
    loss = (
        keras.losses.SparseCategoricalCrossentropy()
        if train.label_smoothing == 0
        else SparseCrossentropyWithSmoothing(train.label_smoothing)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate_schedule(train), momentum=train.momentum),
        loss=loss,
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        ],
    )
    return model


def current_learning_rate(model: keras.Model) -> float:
    """The learning rate the optimizer applies at its current step."""
    return float(ops.convert_to_numpy(model.optimizer.learning_rate))
