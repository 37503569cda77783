"""`python -m carclf.predict` on photos made here (EXIF-rotated, boxed, odd sizes) and, in the optional
`shared_data` lane, on real ones, with a model trained here: the same pixels as training, every input
answered, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import carclf  # noqa: F401  (what a user's program imports to load a carclf model)
from carclf.data.images import load_crop
from carclf.data.table import class_names
from carclf.files import write_json
from carclf.model_folder import ModelFolder
from carclf.predict import parse_image_argument
from carclf.train import TrainingData, train_classifier
from tests.helpers import REPO


@pytest.fixture(scope="module")
def trained_model(tiny_dataset, tiny_settings, tmp_path_factory):
    """A model trained with label smoothing (a custom loss), saved with its labels and settings."""
    settings = tiny_settings.with_train(epochs=1, unfreeze_depth=0, label_smoothing=0.1)
    model = train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), settings)
    return ModelFolder(tmp_path_factory.mktemp("model")).save(model, class_names(tiny_dataset.index), settings)


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "carclf.predict", *map(str, args)], capture_output=True, text=True, timeout=180)


def _assert_named_top_classes(trained_model, inputs, names):
    """predict answers each input, in order, with its 3 top classes, named, most probable first."""
    result = _predict("--model", trained_model, "--top-k", "3", "--json", *inputs)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [parse_image_argument(str(i)).path for i in inputs]
    for line in lines:
        assert len(line["top"]) == 3 and {t["class_name"] for t in line["top"]} <= set(names)
        probabilities = [t["probability"] for t in line["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_photos_get_named_top_classes(trained_model, photos, tiny_index):
    _assert_named_top_classes(trained_model, [*photos.all, f"{photos.car}@{','.join(map(str, photos.car_box))}"], class_names(tiny_index))


@pytest.mark.shared_data
def test_real_photos_get_named_top_classes(trained_model, real_samples, tiny_index):
    _assert_named_top_classes(trained_model, real_samples, class_names(tiny_index))


def test_plain_keras_load_model_agrees_with_predict(trained_model, photos):
    """The saved model holds its own preprocessing: the stored crop is all it needs."""
    result = _predict("--model", trained_model, "--json", "--top-k", "1", *photos.all)
    expected = [json.loads(line)["top"][0]["class_name"] for line in result.stdout.splitlines()]
    model = keras.models.load_model(trained_model)
    names = json.loads((trained_model.parent / "labels.json").read_text())["class_names"]
    crops = np.stack([load_crop(path, None, 32) for path in photos.all])
    assert [names[i] for i in model.predict(crops, verbose=0).argmax(axis=1)] == expected


def test_a_sideways_phone_photo_is_classified_as_the_upright_one(trained_model, tiny_cars, tmp_path):
    upright = np.asarray(Image.open(next((tiny_cars / "cars_test").glob("*.jpg"))).convert("RGB"))
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "phone.png", exif=exif)
    result = _predict("--model", trained_model, "--json", "--top-k", "4", tmp_path / "upright.png", tmp_path / "phone.png")
    upright_top, phone_top = (json.loads(line)["top"] for line in result.stdout.splitlines())
    assert [t["class_name"] for t in upright_top] == [t["class_name"] for t in phone_top]
    np.testing.assert_allclose([t["probability"] for t in upright_top], [t["probability"] for t in phone_top], atol=1e-5)


def test_every_input_gets_a_json_line_failures_included(trained_model, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos.car.read_bytes()[:150])
    inputs = [tmp_path / "missing.jpg", broken, photos.car, f"{photos.car}@20,40,900,180", f"{photos.car}@50,40,20,180",
              f"{photos.car}@1,2,3", f"{photos.sideways}@20,40,200,180"]
    result = _predict("--model", trained_model, "--json", *inputs)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(i) for i in inputs]
    assert lines[0]["error"] == "file not found"
    assert "not a readable image" in lines[1]["error"]
    assert "top" in lines[2] and "top" in lines[6] and lines[6]["box"] == [20, 40, 200, 180]
    assert lines[3]["error"] == "box (20, 40, 900, 180) does not fit in the 224x224 image" and lines[3]["box"] == [20, 40, 900, 180]
    assert "is empty" in lines[4]["error"]
    assert "four whole numbers" in lines[5]["error"]


def test_text_output_names_failures_and_classifies_the_rest(trained_model, photos, tmp_path):
    result = _predict("--model", trained_model, tmp_path / "missing.jpg", photos.car)
    assert result.returncode == 1
    assert f"error: {tmp_path / 'missing.jpg'}: file not found" in result.stderr
    assert f"{photos.car}\n  1. " in result.stdout and "Traceback" not in result.stderr


def test_top_k_below_one_is_refused(trained_model, photos):
    result = _predict("--model", trained_model, "--top-k", "0", photos.car)
    assert result.returncode == 2 and "--top-k must be at least 1, got 0" in result.stderr


def test_labels_that_do_not_match_the_model_are_refused(trained_model, photos, tmp_path):
    copy = tmp_path / "model.keras"
    shutil.copy(trained_model, copy)
    write_json(tmp_path / "labels.json", {"class_names": ["a", "b", "c"]})
    result = _predict("--model", copy, photos.car)
    assert result.returncode == 2
    assert "labels.json: names 3 classes, but model.keras has 4 outputs" in result.stderr and "Traceback" not in result.stderr


def test_model_without_labels_is_an_error(trained_model, tmp_path, photos):
    lonely = tmp_path / "model.keras"
    shutil.copy(trained_model, lonely)
    result = _predict("--model", lonely, photos.car)
    assert result.returncode == 2 and "labels.json not found" in result.stderr


def test_model_without_its_settings_is_served_with_the_default_crop_saying_so(trained_model, tmp_path, photos):
    """A model saved before carclf.train wrote config.json: predict still answers, and says how it crops."""
    copy = tmp_path / "model.keras"
    shutil.copy(trained_model, copy)
    shutil.copy(trained_model.parent / "labels.json", tmp_path / "labels.json")
    result = _predict("--model", copy, "--json", photos.car)
    assert result.returncode == 0 and "top" in json.loads(result.stdout), result.stderr[-2000:]
    assert f"{tmp_path / 'config.json'}: not found beside the model" in result.stderr
    assert "cropping with carclf's defaults (crop_to_bbox True, bbox_margin 0.05)" in result.stderr


def test_box_argument_parsing():
    assert parse_image_argument("a@b.jpg@1,2,3,4").box == (1, 2, 3, 4)
    assert parse_image_argument("a@b.jpg@1,2,3,4").path == "a@b.jpg"
    assert parse_image_argument("me@home.jpg").box is None


def test_model_with_code_is_refused_by_safe_mode(tmp_path, photos):
    """A .keras file carrying a Lambda (arbitrary code) must not be loaded."""
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    write_json(tmp_path / "labels.json", {"class_names": ["a", "b"]})
    result = _predict("--model", tmp_path / "model.keras", photos.car)
    assert result.returncode == 2
    assert "error:" in result.stderr and "safe_mode" in result.stderr


def test_predict_works_from_the_folder_that_holds_a_checkout_named_carclf(trained_model, tiny_cars, tmp_path):
    """`git clone` names the checkout `carclf`; run from its parent, that folder shadows the installed package.
    Predict (which loads carclf's layers), train and the search answer there as in the checkout."""
    (tmp_path / "carclf").symlink_to(REPO, target_is_directory=True)
    photo = next((tiny_cars / "cars_test").glob("*.jpg"))
    for folder in (tmp_path, REPO):
        result = subprocess.run([sys.executable, "-m", "carclf.predict", "--model", str(trained_model), str(photo)],
                                capture_output=True, text=True, timeout=180, cwd=folder)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"{photo}\n  1. " in result.stdout
    for command in ("carclf.train", "tuning.search"):
        result = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m {command}"), result.stderr[-2000:]
