"""The Ray Tune trainable: one trial is a `carclf.train.TrainingRun`, one `step` is one epoch.

A class trainable, so that Tune reuses its worker processes (`TuneConfig(reuse_actors=True)`): a
worker keeps what does not depend on the trial (the backend imported, the store's memory map open,
the feature cache mapped, and the compiled models of `carclf.compiled_models`), and `reset_config`
starts the next trial from a clean state: the trial's seeds, a fresh or as-built model and optimizer,
no metric or best value carried over. A trial that raises is never reset: Ray replaces its worker.

Every epoch reports the epoch's metrics and the trial's objective, `best_<metric>`: the best value
of the search metric over the epochs so far (the first epoch that reached it is `best_epoch`). ASHA,
Optuna, the ranking of trials and the number of epochs the winner is retrained for all read that one
rule (`tuning.trials.Selection`). A diverged epoch ends the trial and reports the worst objective.

Where a trial's time goes, reported every epoch: `setup_seconds` (from the trial's start in this
worker to its first epoch: for a worker's first trial that includes importing the backend),
`train_seconds`, `eval_seconds`, `checkpoint_seconds`, `compile_seconds` (each phase's first epoch
minus its fastest later one; 0 until a phase has a second epoch), `reused_compiled` (the models came
compiled from an earlier trial) and `worker_trials` (trials this worker has run, this one included).
On JAX, `compiles` counts the Keras step programs XLA compiled during the trial so far
(`carclf.compilation.CompileCounter`): 0 for a trial whose shapes its worker, or the persistent cache, already had.

Checkpoints are light (`carclf.checkpoints`) and rare: at the trial's last epoch and at most every
`checkpoint_minutes`; they serve `--resume` and retried failures. Each also holds the trial's best
epoch's weights, kept in memory (a host copy) whenever an epoch becomes the best: the final checkpoint
holds the trial's own model, which the run can deliver (`tuning.deliver`).
"""

from __future__ import annotations

import time

TRIAL_MODULE_LOADED = time.perf_counter()  # before the backend's import, which a worker's first trial pays for

import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

from carclf.checkpoints import read_best_epoch, save_best_epoch  # noqa: E402
from carclf.compilation import compile_counter  # noqa: E402
from carclf.compiled_models import CompiledModels  # noqa: E402
from carclf.config import RunSettings  # noqa: E402
from carclf.data.store import open_image_store  # noqa: E402
from carclf.model import layer_weights  # noqa: E402
from carclf.phases import final_phase_epochs  # noqa: E402
from carclf.runtime import configure_process  # noqa: E402
from carclf.train import TrainingData, TrainingRun  # noqa: E402
from tuning.shipping import Shipment  # noqa: E402
from tuning.trials import Selection  # noqa: E402

OUT_OF_MEMORY_SIGNS = ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating")


def assigned_resources() -> tuple[int | None, float]:
    """The CPUs and the share of a GPU Ray reserved for this trial ((None, 1.0) outside Ray)."""
    if not ray.is_initialized():
        return None, 1.0
    resources = ray.get_runtime_context().get_assigned_resources()
    cpus = max(1, int(resources["CPU"])) if resources.get("CPU") else None
    gpus = resources.get("GPU", 0.0)
    return cpus, gpus if 0 < gpus < 1 else 1.0


class CarClassifierTrainable(tune.Trainable):
    """One trial per `setup`/`reset_config`; see the module docstring.

    `index` (the dataset table), `settings` (with `model.weights` already a file), `store` (the
    decoded pixels) and `features` (cached frozen features, or None) arrive through
    `tune.with_parameters`, so the table travels once through Ray's object store; so does
    `shipment`, the store, features and weights themselves for a node that does not share the
    driver's disk (`tuning.shipping`), unpacked at those paths before they are opened.
    """

    def setup(self, config: dict[str, Any], index: pd.DataFrame, settings: RunSettings, store: str, features: str | None = None,
              selection: Selection = Selection(), checkpoint_minutes: float = 10.0, shipment: Shipment = Shipment()) -> None:
        shipment.unpack()
        self.index, self.base_settings, self.selection = index, settings, selection
        self.data = TrainingData(index, Path(store), Path(features) if features else None)
        self.checkpoint_minutes = checkpoint_minutes
        self.cpus, self.gpu_share = assigned_resources()
        self.pixels = open_image_store(store, settings.data.image_size)
        self.models = CompiledModels()
        self.worker_trials = 0
        self._start_trial(config, TRIAL_MODULE_LOADED)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._start_trial(new_config, time.perf_counter())
        return True

    def _start_trial(self, config: dict[str, Any], started: float) -> None:
        self.settings = self.base_settings.with_hyperparameters(config)
        configure_process(self.cpus, self.settings.train.seed, self.gpu_share)
        self.run = TrainingRun(self.data, self.settings, workers=max(1, min(4, (self.cpus or 2) - 1)), models=self.models,
                               pixels=self.pixels)
        self.worker_trials += 1
        self.trial_started, self.setup_seconds = started, None
        self.best, self.best_epoch = None, 0
        self.best_weights: dict | None = None  # the best epoch's, when it is not the current one
        self.phase_epochs: dict[str, list[float]] = {}
        self.compiles_before = len(compile_counter().compiled)
        self.last_checkpoint = time.monotonic()
        self.pending_checkpoint: Path | None = None

    def step(self) -> dict[str, Any]:
        if self.setup_seconds is None:
            self.setup_seconds = time.perf_counter() - self.trial_started
        if self.run.finished:  # restored from its final checkpoint
            return {"done": True, "epoch": self.run.epoch, self.selection.objective: self._objective(False)}
        try:
            logs = dict(self.run.train_epoch())
        except Exception as error:
            if any(sign in str(error) for sign in OUT_OF_MEMORY_SIGNS):
                raise MemoryError(
                    f"out of GPU memory training batch size {self.settings.train.batch_size} at {self.settings.data.image_size} px "
                    f"with {self.gpu_share:.2g} of the GPU ({self.run.precision}); lower the batch size or raise resources.gpus_per_trial"
                ) from None
            raise
        return self._epoch_result(logs)

    def _epoch_result(self, logs: dict[str, float]) -> dict[str, Any]:
        """The epoch's report: its logs, the objective, where the time went, and whether to checkpoint or stop."""
        number, train = self.run.epoch, self.settings.train
        value = float(logs.get(self.selection.metric, math.nan))
        if self.selection.improves(value, self.best):
            self.best, self.best_epoch = value, number
            self.best_weights = None if number == train.epochs else layer_weights(self.run.current.model)
        diverged = bool(logs.pop("diverged", 0.0))
        phase = self.run.current.phase.name
        self.phase_epochs.setdefault(phase, []).append(logs["train_seconds"])
        metrics: dict[str, Any] = {key: (float(v) if math.isfinite(float(v)) else None) for key, v in logs.items()}
        metrics.update({
            "epoch": number, "phase": phase, "precision": self.run.precision,
            "final_phase_epochs": final_phase_epochs(train, number),
            "diverged": diverged, "best_epoch": self.best_epoch, self.selection.objective: self._objective(diverged),
            "node_id": ray.get_runtime_context().get_node_id(),
            "setup_seconds": self.setup_seconds, "compile_seconds": self._compile_seconds(),
            "reused_compiled": self.run.current.reused, "worker_trials": self.worker_trials,
        })
        counter = compile_counter()
        if counter.counting:
            metrics["compiles"] = counter.step_programs(since=self.compiles_before)
        last = number == train.epochs or diverged
        if last:
            metrics["done"] = True
        due = number == train.epochs or time.monotonic() - self.last_checkpoint >= self.checkpoint_minutes * 60
        if due and not diverged:
            started = time.perf_counter()
            self.pending_checkpoint = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=self.logdir))
            metrics["checkpoint_bytes"] = self._write_checkpoint(self.pending_checkpoint)
            metrics["checkpoint_seconds"] = time.perf_counter() - started
            metrics["should_checkpoint"] = True
            self.last_checkpoint = time.monotonic()
        return metrics

    def _objective(self, diverged: bool) -> float:
        return self.selection.worst if diverged or self.best is None else self.best

    def _compile_seconds(self) -> float:
        """Each phase's first epoch minus its fastest later one: the time compiling took (0 while unknown)."""
        return sum(max(0.0, seconds[0] - min(seconds[1:])) for seconds in self.phase_epochs.values() if len(seconds) > 1)

    def _write_checkpoint(self, folder: str | Path) -> int:
        """The run's checkpoint with the best epoch's weights beside it; returns the bytes written."""
        written = self.run.save(folder, {"phase": self.run.current.phase.name, "best": self.best, "best_epoch": self.best_epoch})
        if self.best is None:
            return written
        best = self.best_weights if self.best_epoch != self.run.epoch else layer_weights(self.run.current.model)
        return written + save_best_epoch(best, folder)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """The checkpoint `step` wrote (moved into Tune's folder), or one written now when Tune asks on its own."""
        pending, self.pending_checkpoint = self.pending_checkpoint, None
        if pending is None:
            self._write_checkpoint(checkpoint_dir)
            return
        for item in pending.iterdir():
            shutil.move(str(item), str(Path(checkpoint_dir) / item.name))
        pending.rmdir()

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = self.run.restore(checkpoint_dir)
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch", 0)
        self.best_weights = read_best_epoch(checkpoint_dir)
