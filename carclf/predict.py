"""`python -m carclf.predict --model RUN_DIR/best/model.keras IMAGE [IMAGE ...]`: classify car photos.

Prints each image's top classes by name with probabilities, using `labels.json` beside the model
and the training preprocessing recorded in `config.json` beside it (image size, bounding-box
crop). Give a box as `IMAGE@x1,y1,x2,y2`. A bad or missing image gets an error line naming it
and the others are still classified; the exit status is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from carclf.config import DataConfig
from carclf.data.pipeline import NO_BOX, load_image, preprocess, tf_error_reason
from carclf.files import read_json


@dataclass(frozen=True)
class ImageRequest:
    path: str
    box: tuple[int, int, int, int] | None


def parse_image_argument(argument: str) -> ImageRequest:
    """`photo.jpg` or `photo.jpg@x1,y1,x2,y2`."""
    path, at, box = argument.rpartition("@")
    if at:
        parts = box.split(",")
        if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
            return ImageRequest(path, tuple(int(p) for p in parts))
    return ImageRequest(argument, None)


def load_predictor(model_path: str | Path) -> tuple[keras.Model, list[str], DataConfig]:
    """The model (loaded in Keras' safe mode), its class names, and its data settings."""
    model_path = Path(model_path)
    labels_path = model_path.with_name("labels.json")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: labels.json not found beside the model")
    model = keras.models.load_model(model_path, safe_mode=True)
    names = read_json(labels_path)["class_names"]
    config_path = model_path.with_name("config.json")
    if config_path.is_file():
        data = DataConfig(**read_json(config_path)["settings"]["data"])
    else:  # a model saved by `carclf.train`: the input shape tells the size
        data = DataConfig(image_size=int(model.input_shape[1]))
    return model, names, data


def predict_image(model: keras.Model, names: list[str], data: DataConfig, request: ImageRequest, top_k: int) -> list[tuple[str, float]]:
    """The `top_k` (class name, probability) pairs for one image, most likely first."""
    if not Path(request.path).is_file():
        raise FileNotFoundError("file not found")
    box = tf.constant(request.box or (NO_BOX,) * 4, dtype=tf.int32)
    image = load_image(tf.constant(request.path), box, data.image_size, data.crop_to_bbox and request.box is not None, data.bbox_margin)
    probabilities = model.predict(preprocess(image[tf.newaxis]), verbose=0)[0]
    best = np.argsort(-probabilities)[:top_k]
    return [(names[i], float(probabilities[i])) for i in best]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carclf.predict", description="Classify car photos with a trained model.")
    parser.add_argument("--model", required=True, help="a .keras model with labels.json beside it (e.g. runs/demo/best/model.keras)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, optionally IMAGE@x1,y1,x2,y2 for a bounding box")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    args = parser.parse_args(argv)
    try:
        model, names, data = load_predictor(args.model)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failures = 0
    for argument in args.images:
        request = parse_image_argument(argument)
        try:
            top = predict_image(model, names, data, request, max(1, args.top_k))
        except FileNotFoundError as error:
            failures += 1
            print(f"error: {request.path}: {error}", file=sys.stderr)
            continue
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
            failures += 1
            reason = tf_error_reason(error)
            print(f"error: {request.path}: cannot classify: {reason}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"image": request.path, "top": [{"class_name": n, "probability": p} for n, p in top]}))
        else:
            print(request.path)
            for rank, (name, probability) in enumerate(top, start=1):
                print(f"  {rank}. {name}  {probability:.1%}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
