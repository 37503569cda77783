"""Light checkpoints: a model's weights, its optimizer's state and a little JSON, in a folder.

A trial checkpoints to survive a restart (`--resume`, a retried failure), never for ASHA, which
stops trials but does not pause them. So it saves only what training needs to go on exactly where
it was (weights, momentum, the step count behind the learning-rate decay) and not a whole `.keras`
model with its architecture; `best/model.keras` is the one full model a run writes.

A trial's checkpoint also holds its best epoch's weights (`BEST_EPOCH_FILE`, each layer's by name,
so a head trained on cached features fits the whole classifier): the trial's own model, which the
run can deliver (`tuning.deliver`) when its best epoch was not its last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from carclf.files import atomic_path, read_json, write_json

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
BEST_EPOCH_FILE = "best_epoch.npz"


def save_checkpoint(model: keras.Model, folder: str | Path, state: dict[str, Any]) -> int:
    """Write `model`'s weights, its optimizer's variables and `state` into `folder`; return the bytes written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_weights(folder / WEIGHTS_FILE)
    variables: dict[str, np.ndarray] = {}
    model.optimizer.save_own_variables(variables)
    with atomic_path(folder / OPTIMIZER_FILE) as partial:
        np.savez(partial, **variables)
    write_json(folder / STATE_FILE, state)
    return sum(path.stat().st_size for path in folder.iterdir())


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / STATE_FILE)


def restore_checkpoint(model: keras.Model, folder: str | Path) -> None:
    """Load the weights and optimizer state saved by `save_checkpoint` into a compiled `model` of the
    same architecture and trainable layers."""
    folder = Path(folder)
    model.load_weights(folder / WEIGHTS_FILE)
    model.optimizer.build(model.trainable_variables)
    with np.load(folder / OPTIMIZER_FILE, allow_pickle=False) as stored:
        model.optimizer.load_own_variables({name: stored[name] for name in stored.files})


def save_best_epoch(weights: dict[str, list[np.ndarray]], folder: str | Path) -> int:
    """Write a trial's best epoch's weights (`carclf.model.layer_weights`) into a checkpoint folder; return the bytes."""
    arrays = {f"{name}/{position}": array for name, values in weights.items() for position, array in enumerate(values)}
    with atomic_path(Path(folder) / BEST_EPOCH_FILE) as partial:
        np.savez(partial, **arrays)
    return (Path(folder) / BEST_EPOCH_FILE).stat().st_size


def read_best_epoch(folder: str | Path) -> dict[str, list[np.ndarray]] | None:
    """The best epoch's weights a checkpoint folder holds, by layer name; None when it holds none."""
    path = Path(folder) / BEST_EPOCH_FILE
    if not path.is_file():
        return None
    weights: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as stored:
        for key in stored.files:
            name, position = key.rsplit("/", 1)
            weights.setdefault(name, {})[int(position)] = stored[key]
    return {name: [values[i] for i in sorted(values)] for name, values in weights.items()}
