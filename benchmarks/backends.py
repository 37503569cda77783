"""Run a benchmark script once per Keras backend, each in its own process (a process has one backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable


def measure_each_backend(script: str, measure_this_backend: Callable[[], dict], json_file: str,
                         backends: tuple[str, ...] = ("tensorflow", "jax")) -> list[dict]:
    """Each backend's figures, measured in its own process, also written to `json_file`.

    Run as `python SCRIPT --backend` (the child), this process measures its own backend, prints the
    figures as one JSON line and exits; otherwise it starts one child per backend, in turn.
    """
    if "--backend" in sys.argv:
        print(json.dumps(measure_this_backend()))
        sys.exit(0)
    results = []
    for backend in backends:
        run = subprocess.run([sys.executable, script, "--backend"], capture_output=True, text=True,
                             env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if run.returncode != 0:
            sys.exit(f"{script} --backend failed under KERAS_BACKEND={backend}:\n{run.stderr[-3000:]}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    Path(json_file).write_text(json.dumps(results, indent=2))
    return results
