"""carclf's own pretrained backbone: a ResNet50 trained briefly on a synthetic task, for offline demos and tests.

Transfer learning needs a backbone that learned something elsewhere, and ImageNet's weights need
the internet. This backbone learns to tell geometric shapes (discs, triangles, squares, crosses,
rings, bars) in eleven colours (eight hues, black, grey, white) on cluttered backgrounds apart:
other classes and shapes than the car drawings it is then used for, so what carries over is
edges, blobs and colour, as with real pretraining.

Only the lower part of the network learns: the stem and the first stage (`trained_through`, the
layers an ImageNet network's first blocks hold: edges, blobs, colours); the stages above keep
their seeded random initialisation, and the trials' unfreeze depth trains them. That is the
cheap part of ResNet50 to train, and it transfers: trained whole (for minutes), the network
narrowed its features to the source task, and a linear probe of its frozen features scored below
random weights' on the demo's cars; trained through its first stage, it scores above them
(benchmarks/README.md, "a backbone that learns in its lower layers only"). The recipe takes
about 20 CPU seconds at 32 px.

The weights file is saved in the layout `keras.applications.ResNet50(include_top=False)` loads,
and cached under carclf's cache folder by its recipe (the entry `backbones/<key>/`,
`carclf.cache`): a changed recipe builds anew, and a damaged file is named and built again.

It is a stand-in for ImageNet, not a substitute: on real photos use `weights = "imagenet"`.
"""

from __future__ import annotations

import colorsys
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from PIL import Image, ImageDraw

from carclf.cache import CacheEntry
from carclf.config import RunSettings
from carclf.layers import RandomFlipRotation
from carclf.model import RANDOM_INIT_BN_MOMENTUM, build_backbone, dtype_policy, pooled_features
from carclf.progress import EpochProgress, ProgressFile
from carclf.runtime import resolve_precision

logger = logging.getLogger(__name__)
SHAPES = ("disc", "triangle", "square", "cross", "ring", "bar")
GREYS = ((0, 60), (100, 170), (200, 256))  # black, grey, white: the colours after the hues
DRAW_SCALE = 4  # shapes are drawn 4x larger, then shrunk: smooth edges at any size
WEIGHTS_FILE = "resnet50-synthetic.weights.h5"


@dataclass(frozen=True)
class BackboneRecipe:
    """How the synthetic backbone is made; its cache entry is keyed by this."""

    image_size: int = 32
    images_per_class: int = 16
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 0.001
    seed: int = 0
    hues: int = 8
    trained_through: str = "conv2_block3_out"  # the last layer that learns; the stages above stay random

    @property
    def colours(self) -> int:
        return self.hues + len(GREYS)

    @property
    def classes(self) -> int:
        return len(SHAPES) * self.colours


def recipe_for(settings: RunSettings) -> BackboneRecipe:
    """The recipe for a run: trained at the run's image size, so BatchNorm's statistics fit its pixels."""
    return BackboneRecipe(image_size=settings.data.image_size)


def backbone_entry(settings: RunSettings, recipe: BackboneRecipe | None = None) -> CacheEntry:
    """The backbone's cache entry, keyed by its recipe."""
    return CacheEntry.of(settings.data.cache_dir, "backbones", dataclasses.asdict(recipe or recipe_for(settings)))


def synthetic_backbone_path(settings: RunSettings, recipe: BackboneRecipe | None = None) -> Path:
    """Where the backbone's weights file is once built (a complete entry's only file)."""
    return backbone_entry(settings, recipe).folder / WEIGHTS_FILE


def synthetic_backbone(settings: RunSettings, build: Callable[[RunSettings], Path] | None = None) -> Path:
    """The cached, verified backbone file for `settings`, built by `build` (default: here) when absent or damaged."""
    if backbone_entry(settings).reuse("synthetic backbone") is not None:
        return synthetic_backbone_path(settings)
    return (build or build_synthetic_backbone)(settings)


def colour_fill(rng: np.random.Generator, colour: int, hues: int) -> tuple[int, int, int]:
    """An RGB fill of colour class `colour`: a hue (within a third of its band, varied saturation and
    brightness) for the first `hues` classes, then black, grey and white."""
    if colour >= hues:
        grey = int(rng.integers(*GREYS[colour - hues]))
        return grey, grey, grey
    hue = (colour + rng.uniform(-0.3, 0.3)) / hues % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return tuple(int(255 * channel) for channel in rgb)


def draw_shape(rng: np.random.Generator, shape: int, fill: tuple[int, int, int], size: int) -> np.ndarray:
    """One `size` x `size` uint8 picture of shape `shape` in colour `fill` on a cluttered background."""
    canvas = size * DRAW_SCALE
    low = rng.integers(0, 200, 3)
    ramp = np.linspace(0, 1, canvas)[:, None, None] * rng.integers(-60, 60, 3)
    background = np.clip(low + ramp + rng.normal(0, 18, (canvas, canvas, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):  # clutter: lines of random colours
        points = [tuple(int(v) for v in rng.integers(0, canvas, 2)) for _ in range(2)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3 * DRAW_SCALE)))
    radius = canvas * rng.uniform(0.2, 0.38)
    cx, cy = rng.uniform(radius, canvas - radius, 2)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    name = SHAPES[shape]
    if name == "disc":
        draw.ellipse(box, fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=int(radius / 3))
    elif name == "square":
        draw.regular_polygon((cx, cy, radius), 4, rotation=float(rng.uniform(0, 90)), fill=fill)
    elif name == "triangle":
        draw.regular_polygon((cx, cy, radius), 3, rotation=float(rng.uniform(0, 120)), fill=fill)
    elif name == "cross":
        thick = radius / 3
        draw.rectangle([cx - radius, cy - thick, cx + radius, cy + thick], fill=fill)
        draw.rectangle([cx - thick, cy - radius, cx + thick, cy + radius], fill=fill)
    else:  # bar
        draw.rectangle([cx - radius, cy - radius / 4, cx + radius, cy + radius / 4], fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def source_task(recipe: BackboneRecipe) -> tuple[np.ndarray, np.ndarray]:
    """The pretraining images and labels (class = shape * colours + colour), shuffled."""
    rng = np.random.default_rng(recipe.seed)
    labels = rng.permutation(np.repeat(np.arange(recipe.classes), recipe.images_per_class))
    images = np.stack([draw_shape(rng, label // recipe.colours, colour_fill(rng, label % recipe.colours, recipe.hues),
                                  recipe.image_size) for label in labels])
    return images, labels.astype(np.int32)


def build_synthetic_backbone(settings: RunSettings, recipe: BackboneRecipe | None = None, progress: str | Path | None = None) -> Path:
    """Train the backbone's layers up to `recipe.trained_through` on the source task (a softmax on their pooled
    output; BatchNorm in training mode, momentum 0.9) and save the whole backbone.

    `progress` names a file told each finished epoch (`carclf.progress`)."""
    recipe = recipe or recipe_for(settings)
    entry = backbone_entry(settings, recipe)
    keras.utils.set_random_seed(recipe.seed)
    images, labels = source_task(recipe)
    logger.info("pretraining carclf's synthetic backbone through %s: %d images of %d classes, %d epochs at %d px -> %s",
                recipe.trained_through, len(images), recipe.classes, recipe.epochs, recipe.image_size, entry.folder)
    size = recipe.image_size
    with dtype_policy(resolve_precision(settings.train.precision)):
        backbone = build_backbone(size, "none")
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = RANDOM_INIT_BN_MOMENTUM
        lower = keras.Model(backbone.input, backbone.get_layer(recipe.trained_through).output)  # shares its layers
        inputs = keras.Input((size, size, 3), dtype="uint8")
        pooled = pooled_features(RandomFlipRotation(15.0, True, seed=recipe.seed)(inputs), lower)
        outputs = keras.layers.Dense(recipe.classes, activation="softmax", dtype="float32")(pooled)
        model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    told = ProgressFile(progress, "pretraining the synthetic backbone (epochs)", recipe.epochs)
    history = model.fit(images, labels, batch_size=recipe.batch_size, epochs=recipe.epochs, verbose=0, shuffle=True,
                        callbacks=[EpochProgress(told)])
    accuracy = float(history.history["accuracy"][-1])
    logger.info("synthetic backbone: training accuracy %.3f after %d epochs", accuracy, recipe.epochs)

    def write(folder: Path) -> dict:
        backbone.save_weights(folder / WEIGHTS_FILE)
        return {"recipe": dataclasses.asdict(recipe), "training_accuracy": accuracy}

    entry.build(write)
    return entry.folder / WEIGHTS_FILE
