"""Run a benchmark script once per Keras backend, each in its own process (a process has one backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def measure_each_backend(script: str, backends: tuple[str, ...] = ("tensorflow", "jax")) -> list[dict]:
    """`python SCRIPT --backend` under each backend; each run prints its figures as one JSON line last."""
    results = []
    for backend in backends:
        output = subprocess.run([sys.executable, script, "--backend"], capture_output=True, text=True, check=True,
                                env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results
