"""Two backends, one flow: JAX runs without TensorFlow, an unsupported backend is named, models cross over."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ALL_MODULES = """
import sys, pkgutil, importlib, carclf, tuning
for package in (carclf, tuning):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
print(sorted(name for name in sys.modules if name == "tensorflow" or name.startswith("tensorflow.")))
"""
PREDICT = """
import sys, numpy as np, keras, carclf
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def _python(code, *args, backend):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend})


@pytest.mark.jax
def test_no_carclf_module_imports_tensorflow_under_jax():
    pytest.importorskip("jax")
    result = _python(ALL_MODULES, backend="jax")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", [["-m", "tuning.search", "--dry-run"], ["-m", "carclf.predict", "--model", "m.keras", "x.jpg"]])
def test_an_unsupported_backend_is_named_without_a_traceback(command):
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KERAS_BACKEND": "torch"})
    assert result.returncode != 0
    assert "carclf runs on the Keras backends tensorflow and jax; KERAS_BACKEND is 'torch'" in result.stderr
    assert "Traceback" not in result.stderr


# Makes `import jax` fail in a child process as it does where JAX is not installed, and `import keras` fail
# loudly: the backend's check must answer before Keras loads.
WITHOUT_JAX = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == "keras":
            raise ImportError("keras was imported before the backend was checked")
        return None

sys.meta_path.insert(0, Missing())
"""


@pytest.mark.parametrize("command", [["-m", "tuning.search", "--dry-run"], ["-m", "carclf.predict", "--model", "m.keras", "x.jpg"]])
def test_jax_asked_for_but_not_installed_is_named_before_keras_loads(command, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_JAX)
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: KERAS_BACKEND is 'jax', but jax is not installed: pip install 'carclf[jax]', or set KERAS_BACKEND=tensorflow.")


def test_a_keras_json_naming_an_unusable_backend_is_named_as_the_culprit(tmp_path):
    """With KERAS_BACKEND unset, Keras reads its backend from keras.json: the error names that file, not the variable."""
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"} | {"KERAS_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "tuning.search", "--dry-run"], capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"{tmp_path / 'keras.json'} names the backend 'torch'" in last and f"or edit {tmp_path / 'keras.json'}" in last
    assert "KERAS_BACKEND is" not in last


@pytest.mark.jax
def test_a_model_trained_on_one_backend_predicts_alike_on_the_other(tiny_dataset, tiny_settings, tmp_path):
    from carclf.data.store import open_image_store
    from carclf.data.table import class_names
    from carclf.model_folder import ModelFolder
    from carclf.train import TrainingData, train_classifier

    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    pytest.importorskip(other)
    model = train_classifier(TrainingData(tiny_dataset.index, tiny_dataset.store), tiny_settings.with_train(epochs=1))
    path = ModelFolder(tmp_path).save(model, class_names(tiny_dataset.index), tiny_settings)
    images = open_image_store(tiny_dataset.store, 32)[:6]
    np.save(tmp_path / "images.npy", images)
    result = _python(PREDICT, path, tmp_path / "images.npy", tmp_path / "other.npy", backend=other)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "other.npy"), model.predict(images, verbose=0), atol=1e-4)


@pytest.mark.parametrize("requested", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_without_a_gpu_warns_and_trains_in_float32(requested, caplog):
    from carclf.runtime import resolve_precision

    with caplog.at_level("WARNING"):
        assert resolve_precision(requested) == "float32"
    assert f"precision {requested} asked for, but no GPU is visible" in caplog.text
    assert resolve_precision("auto") == "float32"


def test_trials_get_their_backend_gpu_share_and_compile_cache(tmp_path):
    from carclf.runtime import trial_environment

    environment = trial_environment("jax", 0.25, tmp_path)
    assert environment["KERAS_BACKEND"] == "jax"
    assert float(environment["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.225)  # its share, with headroom
    assert environment["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in trial_environment("jax", 1.0, None)  # a whole GPU: JAX's own default
