"""The one module that knows the Keras backends by name: which are supported, and per-process settings.

carclf's model, data and training code use only `keras`, `keras.ops` and numpy. What cannot be
said that way lives here: the backend check (before Keras loads), the environment a trial process
needs before its backend starts (GPU memory share, compilation cache), threads, determinism and
seeds, and the precision a device supports. XLA compilation, the other place that names them, is
`carclf.compilation`. TensorFlow and JAX are imported inside the functions that need them, so this module loads on
either backend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from carclf.config import PRECISIONS
from carclf.files import keras_home

logger = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("tensorflow", "jax")
DEFAULT_TF_LOG_LEVEL = "2"  # TensorFlow's C++ logs: errors only, unless the user set TF_CPP_MIN_LOG_LEVEL
# What TensorFlow's C++ code writes before absl's logging starts, whatever TF_CPP_MIN_LOG_LEVEL says: a
# notice, then records such as "I0000 00:00:1796194143.950851    7118 port.cc:153] oneDNN custom operations ...".
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ABSL_RECORD = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
NO_GPU_ERROR = "failed call to cuInit"  # logged as an error on every machine without a CUDA driver


class UnsupportedBackendError(ImportError):
    """KERAS_BACKEND (or keras.json) names a backend carclf does not run on, or one that is not installed."""


BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax"}  # the module each supported backend imports
BACKEND_INSTALL = {"tensorflow": "pip install tensorflow", "jax": "pip install 'carclf[jax]'"}


def backend_setting() -> tuple[str, str]:
    """The Keras backend this process will load and what chose it ("KERAS_BACKEND", the keras.json file, or
    "Keras' default"), read as Keras reads them, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    keras_json = keras_home() / "keras.json"
    try:
        return json.loads(keras_json.read_text()).get("backend", "tensorflow"), str(keras_json)
    except (OSError, ValueError, AttributeError):
        return "tensorflow", "Keras' default"


def configured_backend() -> str:
    """The Keras backend this process will load (see `backend_setting`)."""
    return backend_setting()[0]


def module_installed(name: str) -> bool:
    """Whether `import name` can find the module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_supported_backend() -> str:
    """The configured backend, or `UnsupportedBackendError` naming what chose it (KERAS_BACKEND or the keras.json
    file) and the way out: a backend carclf does not run on, or one whose library is not installed.

    Called when `carclf` is imported, before Keras loads: a command-line run then ends with the
    message alone rather than a traceback (the exception hook below), while a program that imports
    carclf can still catch the error.
    """
    backend, source = backend_setting()
    chosen = f"KERAS_BACKEND is {backend!r}" if source == "KERAS_BACKEND" else f"{source} names the backend {backend!r}"
    edit = "" if source == "KERAS_BACKEND" else f", or edit {source}"
    if backend not in SUPPORTED_BACKENDS:
        message = (f"carclf runs on the Keras backends {' and '.join(SUPPORTED_BACKENDS)}; {chosen}. Set KERAS_BACKEND=tensorflow "
                   f"(the default) or KERAS_BACKEND=jax (pip install 'carclf[jax]'){edit}.")
    elif not module_installed(BACKEND_MODULES[backend]):
        other = next(name for name in SUPPORTED_BACKENDS if name != backend)
        message = f"{chosen}, but {BACKEND_MODULES[backend]} is not installed: {BACKEND_INSTALL[backend]}, or set KERAS_BACKEND={other}{edit}."
    else:
        return backend
    previous_hook = sys.excepthook

    def report(kind, error, trace):
        if issubclass(kind, UnsupportedBackendError):
            print(f"error: {error}", file=sys.stderr)
        else:
            previous_hook(kind, error, trace)

    sys.excepthook = report
    raise UnsupportedBackendError(message)


def tensorflow_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0: everything, 1: no info, 2: no warnings, 3: no errors)."""
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return int(value) if value.isdigit() else 0


def is_startup_chatter(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL `level` hides this line of TensorFlow's start-up output.

    TensorFlow's earliest C++ records ignore the level, so carclf applies it to them: info from 1,
    warnings from 2, errors from 3. At 2 the cuInit failure is hidden too: on a machine without a GPU
    it only says that TensorFlow will use the CPU, yet it reads like a failure.
    """
    record = ABSL_RECORD.match(line)
    if line.startswith(ABSL_PREAMBLE):
        return level >= 1
    if record is None:
        return False
    severity = "IWEF".index(record.group(1))
    return severity < level or (level >= 2 and NO_GPU_ERROR in line)


@contextlib.contextmanager
def quiet_backend_startup():
    """Hide the start-up chatter (`is_startup_chatter`) that TensorFlow's C++ code writes to file
    descriptor 2 while the block runs; every other line, Python's warnings included, still shows.

    The block is where Keras loads its backend; `probe_devices` belongs in it, as the probe is when
    a machine without a GPU logs cuInit's failure. What the block writes is shown when it ends.
    """
    level = tensorflow_log_level()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to borrow
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_startup_chatter(line, level)))
            sys.stderr.flush()


def probe_devices() -> None:
    """Have TensorFlow, where Keras runs on it, look for GPUs now (it would at its first op anyway)."""
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].config.list_physical_devices("GPU")


def trial_environment(backend: str, gpu_share: float, compile_cache: str | Path | None) -> dict[str, str]:
    """Environment variables a worker process needs before its backend starts.

    `gpu_share` (0 < share < 1) caps a JAX process's GPU memory at its share of the card, so
    packed trials never run it out of memory (TensorFlow gets a logical-device limit instead, in
    `configure_process`). `compile_cache` is the persistent compilation cache: JAX's, and
    TensorFlow's XLA cache where XLA runs.
    """
    environment = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL),
                   "PYTHONUNBUFFERED": "1"}
    if 0 < gpu_share < 1:
        environment["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpu_share:.3f}"  # 10% headroom for the runtime
    if compile_cache:
        environment["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
        # JAX stores only programs that took 1 s to compile by default; a head-only train step takes about 0.3 s
        # on a CPU. At 0.1 s every carclf step is stored, and not the many small kernels of eager operations.
        environment["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
        environment["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={compile_cache}"
    return environment


def configure_process(cpus: int | None, seed: int, gpu_share: float = 1.0) -> None:
    """Threads, GPU memory, determinism and seeds for this process; call before the first Keras op.

    Thread counts keep concurrent trials from oversubscribing the machine. On a CPU, TensorFlow's
    op determinism makes a run repeatable on one machine (JAX on CPU is deterministic already).
    Seeds cover Python, NumPy and the backend (`keras.utils.set_random_seed`, which also seeds
    TensorFlow whenever it is installed, even under JAX).
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        _configure_tensorflow(cpus, gpu_share)
    keras.utils.set_random_seed(seed)


def _configure_tensorflow(cpus: int | None, gpu_share: float) -> None:
    import tensorflow as tf

    try:
        if cpus:
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(cpus)
        for gpu in tf.config.list_physical_devices("GPU"):
            total_mb = _gpu_memory_mb()
            if 0 < gpu_share < 1 and total_mb:
                limit = int(0.9 * gpu_share * total_mb)
                tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:  # TensorFlow already initialised in this process
        logger.debug("TensorFlow runtime already configured: %s", error)
    if not tf.config.list_physical_devices("GPU"):  # on GPUs determinism would rule out the fastest kernels
        tf.config.experimental.enable_op_determinism()


def _gpu_memory_mb() -> int | None:
    """The first GPU's memory in MiB, from nvidia-smi (TensorFlow reports it only after allocating)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return int(output.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@functools.cache
def gpu_compute_capability() -> float | None:
    """The first GPU's CUDA compute capability (8.0 for an A100, 9.0 for an H100), None without a GPU.

    Asked once per process: its devices do not change, and every precision resolved reads it."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        return float(getattr(gpus[0], "compute_capability", 0) or 0) if gpus else None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    major, minor = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
    return major + minor / 10


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy to train with: `auto` picks the fastest one this device supports.

    Mixed bfloat16 needs compute capability 8.0 (A100, H100); older tensor-core GPUs get mixed
    float16. On a CPU every mixed policy falls back to float32, with a warning when one was asked
    for: mixed precision there is slower, never faster.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    capability = gpu_compute_capability()
    if capability is None:
        if requested.startswith("mixed"):
            logger.warning("precision %s asked for, but no GPU is visible: training in float32", requested)
        return "float32"
    if requested != "auto":
        return requested
    if capability >= 8.0:
        return "mixed_bfloat16"
    return "mixed_float16" if capability >= 7.0 else "float32"
