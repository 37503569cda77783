"""`python -m carclf.predict` on the real sample photos, with a model trained here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from carclf.data.table import class_names
from carclf.train import build_model, fit, save_labels, save_model
from carclf.predict import parse_image_argument


@pytest.fixture(scope="module")
def trained_model(tiny_index, tiny_settings, tmp_path_factory):
    model = build_model(len(class_names(tiny_index)), tiny_settings)
    fit(model, tiny_index, tiny_settings)
    folder = tmp_path_factory.mktemp("model")
    save_labels(class_names(tiny_index), folder / "labels.json")
    return save_model(model, folder / "model.keras")


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "carclf.predict", *map(str, args)], capture_output=True, text=True, timeout=180)


def test_real_photos_get_named_top_classes(trained_model, real_samples, tiny_index):
    result = _predict("--model", trained_model, "--top-k", "3", "--json", *real_samples)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in real_samples]
    names = set(class_names(tiny_index))
    for line in lines:
        assert len(line["top"]) == 3 and {t["class_name"] for t in line["top"]} <= names
        probabilities = [t["probability"] for t in line["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_bad_and_missing_images_are_named_and_others_still_classified(trained_model, real_samples, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(real_samples[0].read_bytes()[:150])
    box = f"{real_samples[1]}@20,40,200,180"
    result = _predict("--model", trained_model, tmp_path / "missing.jpg", broken, real_samples[0], box)
    assert result.returncode == 1
    assert f"error: {tmp_path / 'missing.jpg'}: file not found" in result.stderr
    assert f"error: {broken}: cannot classify" in result.stderr
    assert f"{real_samples[0]}\n  1. " in result.stdout and f"{real_samples[1]}\n  1. " in result.stdout


def test_model_without_labels_is_an_error(trained_model, tmp_path, real_samples):
    lonely = tmp_path / "model.keras"
    shutil.copy(trained_model, lonely)
    result = _predict("--model", lonely, real_samples[0])
    assert result.returncode == 2 and "labels.json not found" in result.stderr


def test_box_argument_parsing():
    assert parse_image_argument("a@b.jpg@1,2,3,4").box == (1, 2, 3, 4)
    assert parse_image_argument("a@b.jpg@1,2,3,4").path == "a@b.jpg"
    assert parse_image_argument("me@home.jpg").box is None


def test_model_with_code_is_refused_by_safe_mode(tmp_path, real_samples):
    """A .keras file carrying a Lambda (arbitrary code) must not be loaded."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    save_labels(["a", "b"], tmp_path / "labels.json")
    result = _predict("--model", tmp_path / "model.keras", real_samples[0])
    assert result.returncode == 2
    assert "error:" in result.stderr and "safe_mode" in result.stderr
