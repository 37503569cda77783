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
        run = subprocess.run([sys.executable, script, "--backend"], capture_output=True, text=True,
                             env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if run.returncode != 0:
            sys.exit(f"{script} --backend failed under KERAS_BACKEND={backend}:\n{run.stderr[-3000:]}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return results
