"""`python -m carclf.predict --model RUN_DIR/best/model.keras IMAGE [IMAGE ...]`: classify car photos.

Each photo goes through the same function that built the training store
(`carclf.data.images.load_crop`: EXIF orientation, box crop with margin, resize), so prediction
sees what training saw; the model itself does the rest. The model's folder (`carclf.model_folder`)
gives the rest: `labels.json` names the classes (and must match the model's outputs), `config.json`
the crop settings the model trained with (whether to crop to the box, and its margin). A model
without config.json (saved before carclf.train wrote one) is served with the default crop, saying
so on stderr. Give a box as `IMAGE@x1,y1,x2,y2`, in the upright photo's pixels. A model trained on
whole pictures (`crop_to_bbox` false in config.json) would see a boxed crop as nothing it trained
on, so it ignores boxes and says so once on stderr; its `--json` results say `"box": null`, as
`box` is always the box the crop used (the argument itself is in `input`).

Only carclf's classifiers are served: a model that does not take uint8 crops through carclf's
augmentation and preprocessing layers would answer confidently from pixels on the wrong scale,
so it is refused, and so is a model without `labels.json`. A damaged file is called damaged. The
folder's three files are checked against each other (`ModelFolder.read`) before any image is read:
labels that are not one distinct name per output, or a config.json from another model, are refused.

Text output lists each image's top classes. With `--json` every input gets one JSON line, failures
included (`"error"`), so a consumer sees as many results as inputs. A bad image does not stop the
others; the exit status is 1 if any image failed, 2 if the model cannot be used.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from carclf.config import DataConfig
from carclf.data.images import ImageError, load_crop
from carclf.model_folder import ModelFolder, ModelFolderError
from carclf.object_storage import ObjectStorageError, fetch_folder, is_uri

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)
BOX_TEXT = re.compile(r"[-+\d\s.,]*")


class PredictorError(ValueError):
    """The --model argument cannot be a model file (it names a folder)."""


@dataclass(frozen=True)
class ImageRequest:
    path: str
    box: tuple[int, int, int, int] | None


def parse_image_argument(argument: str) -> ImageRequest:
    """`photo.jpg` or `photo.jpg@x1,y1,x2,y2` (whole numbers); a file name may itself contain '@'."""
    path, at, box = argument.rpartition("@")
    if not at or not BOX_TEXT.fullmatch(box):
        return ImageRequest(argument, None)
    parts = [part.strip() for part in box.split(",")]
    if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", part) for part in parts):
        raise ImageError(f"{path}: box {box!r} must be four whole numbers x1,y1,x2,y2")
    return ImageRequest(path, tuple(int(part) for part in parts))


@dataclass(frozen=True)
class Predictor:
    model: keras.Model
    class_names: list[str]
    data: DataConfig
    folder: ModelFolder  # where they came from, to name its files

    def top(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        best = np.argsort(-probabilities)[: min(k, len(self.class_names))]
        return [(self.class_names[i], float(probabilities[i])) for i in best]


def load_predictor(model_path: str | Path) -> Predictor:
    """The model, its class names and the crop settings it trained with, read and checked by its folder
    (`ModelFolder.read`). Raises `PredictorError` or `ModelFolderError`, naming the file at fault."""
    model_path = Path(model_path)
    if model_path.is_dir():
        raise PredictorError(f"{model_path}: a folder, not a model file; give the .keras file carclf saved in it "
                             f"(e.g. {ModelFolder(model_path).model_file})")
    folder = ModelFolder.of_model(model_path)
    saved = folder.read()
    data = saved.data
    if data is None:
        data = DataConfig(image_size=saved.image_size)
        logger.warning("%s: not found beside the model, so its crop settings are unknown: cropping with carclf's defaults "
                       "(crop_to_bbox %s, bbox_margin %s)", folder.config_file, data.crop_to_bbox, data.bbox_margin)
    return Predictor(saved.model, saved.class_names, data, folder)


def classify(predictor: Predictor, requests: Sequence[ImageRequest], top_k: int) -> list[dict]:
    """One result per request, in order: `{"image", "box", "top": [...]}` or `{"image", "box", "error"}`, where
    `box` is the box the crop used: None for the whole picture, and so for every request to a model trained
    on whole pictures (`crop_to_bbox` false), which ignores the boxes it is given."""
    results, crops = [], []
    for request in requests:
        box = request.box if predictor.data.crop_to_bbox else None
        result = {"image": request.path, "box": list(box) if box else None}
        try:
            crops.append(load_crop(request.path, box, predictor.data.image_size, predictor.data.bbox_margin))
        except (ImageError, OSError) as error:
            result["error"] = str(error).removeprefix(f"{request.path}: ")
        results.append(result)
    if crops:
        probabilities = iter(predictor.model.predict(np.stack(crops), batch_size=32, verbose=0))
        for result in results:
            if "error" not in result:
                result["top"] = [{"class_name": name, "probability": p} for name, p in predictor.top(next(probabilities), top_k)]
    return results


def local_model(model: str) -> str:
    """`--model` as a local file: a model on object storage (`s3://.../best/model.keras`) is fetched with its folder first."""
    if not is_uri(model):
        return model
    folder, name = model.rstrip("/").rsplit("/", 1)
    return str(fetch_folder(folder) / name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carclf.predict", description="Classify car photos with a trained model.")
    parser.add_argument("--model", required=True, help="a .keras model with labels.json beside it (e.g. runs/demo/best/model.keras, or "
                                                          "s3://bucket/runs/demo/best/model.keras)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, optionally IMAGE@x1,y1,x2,y2 for a bounding box")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    entries: list[ImageRequest | dict] = []  # a request, or the error that its argument already is
    for argument in args.images:
        try:
            entries.append(parse_image_argument(argument))
        except ImageError as error:
            path = argument.rpartition("@")[0]
            entries.append({"image": path, "box": None, "error": str(error).removeprefix(f"{path}: ")})
    try:
        predictor = load_predictor(local_model(args.model))
    except (PredictorError, ModelFolderError, ObjectStorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    requests = [entry for entry in entries if isinstance(entry, ImageRequest)]
    if not predictor.data.crop_to_bbox and any(request.box for request in requests):
        print(f"note: {predictor.folder.config_file}: the model was trained on whole pictures (settings.data.crop_to_bbox is false), "
              "so the boxes given are ignored: each picture is classified whole", file=sys.stderr)
    classified = iter(classify(predictor, requests, args.top_k))
    ordered = [next(classified) if isinstance(entry, ImageRequest) else entry for entry in entries]
    for argument, result in zip(args.images, ordered):
        if args.json:
            print(json.dumps({"input": argument, **result}))
        elif "error" in result:
            print(f"error: {result['image']}: {result['error']}", file=sys.stderr)
        else:
            print(argument)
            for rank, entry in enumerate(result["top"], start=1):
                print(f"  {rank}. {entry['class_name']}  {entry['probability']:.1%}")
    return 1 if any("error" in result for result in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())
