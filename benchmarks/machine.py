"""The machine a benchmark ran on, named as `lscpu` names it: TensorFlow's CPU speed differs 3-8x between
the Intel and AMD machines we measure on, so no figure is written without it."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """`lscpu`'s model name (for example "AMD EPYC"), or the platform's processor name when it gives none."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), platform.processor())
