"""Backbone weights as files: `model.weights` names are resolved once, before any trial starts.

`"imagenet"` is Keras' ResNet50 (no top) ImageNet file, downloaded once into Keras' cache
(`~/.keras/models/`) or found there; offline, the error names the file to fetch and where to put
it. `"synthetic"` is carclf's own backbone pretrained on a synthetic task (`carclf.pretrained`),
built on first use and cached. A path is checked to be an HDF5 file holding ResNet50's 318 weight
arrays. Trials then receive the path, so no trial downloads or builds anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import h5py

from carclf.config import RunSettings
from carclf.files import keras_home
from carclf.model import WeightsError

IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_FILE}"
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # keras.applications.resnet's own hash for this file
RESNET50_NOTOP_ARRAYS = 318  # kernels, biases and BatchNorm statistics of ResNet50 without its top


def imagenet_cache_file() -> Path:
    """Where Keras keeps the ImageNet weights file once downloaded."""
    return keras_home() / "models" / IMAGENET_FILE


def imagenet_weights() -> Path:
    """The ImageNet weights file, downloaded into Keras' cache unless it is there already."""
    import keras

    try:
        return Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models", file_hash=IMAGENET_MD5))
    except Exception as error:  # Keras raises a bare Exception for a failed download
        target = imagenet_cache_file()
        raise WeightsError(
            f"could not download the ImageNet weights ({error}). Without internet, fetch {IMAGENET_URL} elsewhere and put it "
            f"at {target} on this machine, or set model.weights to the file's path."
        ) from None


def check_weights_file(path: str | Path) -> Path:
    """`path` if it is an HDF5 file with ResNet50's (no top) weight arrays, else a `WeightsError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (model.weights must be 'imagenet', 'synthetic', 'none' or a file)")
    arrays: list[str] = []
    try:
        with h5py.File(path, "r") as stored:
            stored.visititems(lambda name, item: arrays.append(name) if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise WeightsError(f"{path}: not a Keras weights file (HDF5): {error}") from None
    if len(arrays) != RESNET50_NOTOP_ARRAYS:
        raise WeightsError(f"{path}: holds {len(arrays)} weight arrays; ResNet50 without its top has {RESNET50_NOTOP_ARRAYS}")
    return path.resolve()


def resolve_weights(settings: RunSettings, build_synthetic: Callable[[RunSettings], Path] | None = None) -> RunSettings:
    """`settings` with `model.weights` as a checked file path (or "none").

    `build_synthetic` makes the synthetic backbone when it is not cached yet; the default builds
    it in this process (a search runs it as a Ray task, where the GPUs are).
    """
    weights = settings.model.weights
    if not settings.model.pretrained:
        return settings
    if weights == "imagenet":
        path = imagenet_weights()
    elif weights == "synthetic":
        from carclf.pretrained import synthetic_backbone

        path = synthetic_backbone(settings, build_synthetic)
    else:
        path = Path(weights)
    model = dataclasses.replace(settings.model, weights=str(check_weights_file(path)))
    return dataclasses.replace(settings, model=model)
