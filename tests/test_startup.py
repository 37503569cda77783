"""What a command does before it works: `--help` and argument errors answer before TensorFlow loads,
its first line is carclf's own, and `import carclf` still registers carclf's Keras objects.

Each case needs a fresh Python (what is imported is the point), so each runs a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs a module as `python -m` does, then says whether TensorFlow (or Keras) got imported on the way.
RUN_AND_CHECK_IMPORTS = textwrap.dedent("""\
    import runpy, sys
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    loaded = [name for name in ("tensorflow", "keras") if name in sys.modules]
    print(f"loaded: {loaded}", file=sys.stderr)
    sys.exit(status)
""")


def python(*arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize(("module", "arguments", "status", "expected"), [
    pytest.param("carclf.predict", ["--help"], 0, r"usage: python -m carclf\.predict", id="predict-help"),
    pytest.param("carclf.predict", ["--model", "m.keras", "--top-k", "0", "x.jpg"], 2, r"--top-k must be at least 1, got 0",
                 id="predict-top-k-zero"),
    pytest.param("carclf.train", ["--help"], 0, r"usage: python -m carclf\.train", id="train-help"),
    pytest.param("carclf.train", [], 2, r"the following arguments are required: --experiment", id="train-no-experiment"),
    pytest.param("tuning.search", ["--help"], 0, r"usage: python -m tuning\.search", id="search-help"),
    pytest.param("tuning.search", ["--num-samples", "many"], 2, r"--num-samples: invalid int value: 'many'", id="search-bad-int"),
])
def test_help_and_argument_errors_answer_before_tensorflow_loads(module, arguments, status, expected):
    result = python("-c", RUN_AND_CHECK_IMPORTS, module, *arguments)
    shown = result.stderr + result.stdout
    assert result.returncode == status, shown
    assert "Traceback" not in shown
    assert re.search(expected, shown), shown
    assert "loaded: []" in result.stderr, f"{module} {' '.join(arguments)} imported Keras or TensorFlow first:\n{shown}"


def test_the_first_line_predict_help_prints_is_its_usage():
    result = python("-m", "carclf.predict", "--help")
    assert result.returncode == 0
    assert (result.stderr + result.stdout).splitlines()[0].startswith("usage: python -m carclf.predict"), result.stderr


CHATTER = (  # what TensorFlow 2.21 wrote on a 2-core machine without a GPU, before carclf applied the log level
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796194143.950851    7118 port.cc:153] oneDNN custom operations are on. You may see slightly different "
    "numerical results due to floating-point round-off errors from different computation orders.\n"
    "I0000 00:00:1796194143.951274    7118 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
    "E0000 00:00:1796194543.110651    9219 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL = ("W0000 00:00:1796194543.2    9219 gpu_device.cc:2] Cannot dlopen some GPU libraries.\n"
        "E0000 00:00:1796194543.3    9219 loader.cc:7] out of memory allocating 2.1GiB\n"
        "a line of Python's own\n")


@pytest.mark.parametrize(("level", "shown"), [
    pytest.param(None, REAL.splitlines()[1:], id="carclf-default"),
    pytest.param("2", REAL.splitlines()[1:], id="level-2"),
    pytest.param("1", CHATTER.splitlines()[-1:] + REAL.splitlines(), id="level-1-shows-warnings-and-errors"),
    pytest.param("0", CHATTER.splitlines() + REAL.splitlines(), id="level-0-shows-all"),
    pytest.param("3", REAL.splitlines()[2:], id="level-3-hides-errors"),
])
def test_startup_chatter_is_hidden_as_tf_cpp_min_log_level_says(level, shown, capfd, monkeypatch):
    """What TensorFlow's C++ code writes on file descriptor 2 while Keras loads its backend is filtered
    by the log level in effect (carclf's default 2, or the user's own): the rest still shows."""
    from carclf.runtime import DEFAULT_TF_LOG_LEVEL, quiet_backend_startup

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level or DEFAULT_TF_LOG_LEVEL)
    with quiet_backend_startup():
        os.write(2, (CHATTER + REAL).encode())
    assert capfd.readouterr().err.splitlines() == shown


@pytest.fixture(scope="module")
def saved_carclf_model(tmp_path_factory) -> Path:
    """A small model with carclf's own layers, which Keras can load only once carclf registered them,
    saved with its labels and settings as carclf saves one."""
    import keras

    from carclf.config import DataConfig, RunSettings, TrainConfig
    from carclf.layers import RandomFlipRotation, ResNetPreprocessing
    from carclf.model_folder import ModelFolder

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    pixels = ResNetPreprocessing()(RandomFlipRotation()(inputs))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(pixels))
    settings = RunSettings(data=DataConfig(image_size=32), train=TrainConfig(precision="float32"))
    return ModelFolder(tmp_path_factory.mktemp("model")).save(keras.Model(inputs, outputs), ["a", "b", "c", "d"], settings)


@pytest.mark.parametrize("imports", [
    pytest.param("import carclf, sys; assert 'carclf.layers' not in sys.modules; import keras", id="keras-after-carclf"),
    pytest.param("import keras, carclf", id="keras-before-carclf"),
    pytest.param("import carclf.layers, keras", id="carclf-layers-loads-keras"),
])
def test_load_model_reads_a_carclf_model_after_import_carclf(imports, saved_carclf_model, tmp_path):
    """README: `keras.models.load_model` reads a saved model after `import carclf`, in either order."""
    code = f"{imports}\nmodel = keras.models.load_model({str(saved_carclf_model)!r})\nprint(type(model.layers[1]).__name__)"
    result = python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["RandomFlipRotation"], result.stdout


def test_predict_prints_its_answer_and_no_tensorflow_chatter(saved_carclf_model, tmp_path):
    """On a machine without a GPU, predict's output is its answer: no absl notice, oneDNN note or cuInit error."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (120, 40, 40)).save(photo)
    result = python("-m", "carclf.predict", "--model", str(saved_carclf_model), "--top-k", "1", str(photo), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == str(photo)
    assert result.stderr == "", result.stderr
