"""Early stopping that judges trials fairly: ASHA's rungs after any warm-up, and no stop within noise.

This is asynchronous successive halving (Li et al., as Ray's `ASHAScheduler`), written out here
because two rules change what a rung means:

- **Rungs count epochs of a trial's final phase** (`final_phase_epochs`, reported by every trial):
  a two-phase trial (`head_epochs` > 0) is first judged after it has fine-tuned, never during its
  head-only warm-up, and a head-only trial is judged on all its epochs. Every epoch holds the same
  number of images, so rungs still compare equal training budgets within the final phase.
- **A stop must clear the noise.** At a rung, a trial below the cut (the rung's top 1/reduction
  quantile) goes on when it is within `noise_z` combined standard errors of the cut, the binomial
  standard error of an accuracy on the validation set (no margin for losses, which have none).

Every rung a trial reaches (its score, the cut, the margin, and continued, spared or stopped) is
appended to `RUN_DIR/rungs.jsonl`, which the trials table and the report read: ASHA's stops are
told apart from trials cut short by a time budget or an interruption, and stops within noise are
counted. A resumed search rebuilds its rungs from that log.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.run_folder import RunFolder
from tuning.trials import NOISE_Z, standard_error

TIME_ATTR = "final_phase_epochs"


def rung_milestones(grace_period: int, max_epochs: int, reduction_factor: float) -> list[int]:
    """The rungs, in final-phase epochs: grace, grace * rf, ... below `max_epochs` (as ASHA places them)."""
    rungs, milestone = [], float(grace_period)
    while milestone < max_epochs:
        rungs.append(int(math.ceil(milestone)))
        milestone *= reduction_factor
    return sorted(set(rungs))


def noise_margin(cut: float, score: float, metric: str, validation_size: int, noise_z: float) -> float:
    """`noise_z` combined standard errors of the cut and the score (0 where the metric has no standard error)."""
    errors = [standard_error(value, metric, validation_size) for value in (cut, score)]
    if noise_z <= 0 or any(error is None for error in errors):
        return 0.0
    return noise_z * math.hypot(*errors)


class NoiseAwareASHA(FIFOScheduler):
    """ASHA on `final_phase_epochs`, sparing trials within noise of a rung's cut (see the module docstring)."""

    relocated_run_dir: Path | None = None  # set before a run is restored, as `tuning.searcher.relocate_study`

    def __init__(self, *, metric: str, mode: str, score_metric: str, max_epochs: int, grace_period: int,
                 reduction_factor: float, validation_size: int, noise_z: float, run_dir: Path, run_id: str | None = None):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.score_metric = score_metric  # the metric the objective is the best of (its standard error)
        self.max_epochs, self.reduction_factor = max_epochs, reduction_factor
        self.validation_size, self.noise_z = validation_size, noise_z
        self.rungs: dict[int, dict[str, float]] = {rung: {} for rung in rung_milestones(grace_period, max_epochs, reduction_factor)}
        self.log_path = RunFolder(Path(run_dir)).rungs_file
        self.run_id = run_id  # on every logged decision: a resume tells this run's log from a copied one

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # metric and mode are given at construction

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        done, score = result.get(TIME_ATTR), result.get(self._metric)
        if done is None or score is None or not math.isfinite(score):
            return TrialScheduler.CONTINUE
        due = [rung for rung in self.rungs if rung <= done and trial.trial_id not in self.rungs[rung]]
        if not due:
            return TrialScheduler.CONTINUE
        return self.judge(trial.trial_id, max(due), float(score), int(result.get("epoch", done)))

    def judge(self, trial_id: str, rung: int, score: float, epoch: int) -> str:
        """Record `score` at `rung` and decide: stop only when it is below the cut by more than the noise margin."""
        recorded = self.rungs[rung]
        sign = 1.0 if self._mode == "max" else -1.0
        cut = sign * float(np.nanpercentile([sign * v for v in recorded.values()], (1 - 1 / self.reduction_factor) * 100)) if recorded else None
        recorded[trial_id] = score
        decision: dict[str, Any] = {"run_id": self.run_id, "trial_id": trial_id, "rung": rung, "epoch": epoch, "score": score, "cut": cut,
                                    "margin": 0.0, "within_noise": False, "decision": "continued"}
        below = sign * (cut - score) if cut is not None else 0.0  # > 0: worse than the cut
        if below > 0 and epoch < self.max_epochs:  # at its last epoch a trial counts for the cut, but it has finished
            margin = noise_margin(cut, score, self.score_metric, self.validation_size, self.noise_z)
            decision.update(margin=margin, decision="stopped" if below > margin else "spared",
                            within_noise=below <= noise_margin(cut, score, self.score_metric, self.validation_size, NOISE_Z))
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(decision) + "\n")
        return TrialScheduler.STOP if decision["decision"] == "stopped" else TrialScheduler.CONTINUE

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled by a resumed search: the rungs are rebuilt from the log, where the run folder is now."""
        self.__dict__.update(state)
        if self.relocated_run_dir is not None:
            self.log_path = RunFolder(self.relocated_run_dir).rungs_file
        self.rungs = {rung: {} for rung in self.rungs}
        for decision in RunFolder(self.log_path.parent).read_rung_decisions():
            self.rungs.setdefault(decision["rung"], {})[decision["trial_id"]] = decision["score"]

    def debug_string(self) -> str:
        return f"NoiseAwareASHA on {TIME_ATTR}: rungs {sorted(self.rungs)}, noise {self.noise_z} standard errors"

