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
a decision in the search's `RungLog`, saved with the searcher's state (`tuning.search_state`) and
written to `RUN_DIR/rungs.jsonl` once the trials stop, which the trials table and the report read:
ASHA's stops are told apart from trials cut short by a time budget or an interruption, and stops
within noise are counted. A resumed search continues from the restored log.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.search_state import RungLog
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
    """ASHA on `final_phase_epochs`, sparing trials within noise of a rung's cut (see the module docstring).

    Tune gives it the metric and mode (`set_search_properties`): the metric the base class keeps,
    the mode this class. Its decisions go to `rung_log`, which the searcher saves and restores
    (`tuning.search_state`), so they survive a resume wherever the run is stored.
    """

    def __init__(self, *, score_metric: str, max_epochs: int, grace_period: int, reduction_factor: float, validation_size: int,
                 noise_z: float, rung_log: RungLog, run_id: str | None = None):
        super().__init__()
        self.mode: str | None = None
        self.score_metric = score_metric  # the metric the objective is the best of (its standard error)
        self.max_epochs, self.reduction_factor = max_epochs, reduction_factor
        self.validation_size, self.noise_z = validation_size, noise_z
        self.milestones = rung_milestones(grace_period, max_epochs, reduction_factor)
        self.rung_log = rung_log
        self.run_id = run_id  # on every decision: a resume tells this run's log from a copied one

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if mode:
            self.mode = mode
        return super().set_search_properties(metric, mode, **spec)

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        done, score = result.get(TIME_ATTR), result.get(self.metric)
        if done is None or score is None or not math.isfinite(score):
            return TrialScheduler.CONTINUE
        due = [rung for rung in self.milestones if rung <= done and trial.trial_id not in self.rung_log.scores.get(rung, {})]
        if not due:
            return TrialScheduler.CONTINUE
        return self.judge(trial.trial_id, max(due), float(score), int(result.get("epoch", done)))

    def judge(self, trial_id: str, rung: int, score: float, epoch: int) -> str:
        """Record `score` at `rung` and decide: stop only when it is below the cut by more than the noise margin."""
        recorded = list(self.rung_log.scores.get(rung, {}).values())
        sign = 1.0 if self.mode == "max" else -1.0
        cut = sign * float(np.nanpercentile([sign * v for v in recorded], (1 - 1 / self.reduction_factor) * 100)) if recorded else None
        decision: dict[str, Any] = {"run_id": self.run_id, "trial_id": trial_id, "rung": rung, "epoch": epoch, "score": score,
                                    "cut": cut, "margin": 0.0, "within_noise": False, "decision": "continued"}
        below = sign * (cut - score) if cut is not None else 0.0  # > 0: worse than the cut
        if below > 0 and epoch < self.max_epochs:  # at its last epoch a trial counts for the cut, but it has finished
            margin = noise_margin(cut, score, self.score_metric, self.validation_size, self.noise_z)
            decision.update(margin=margin, decision="stopped" if below > margin else "spared",
                            within_noise=below <= noise_margin(cut, score, self.score_metric, self.validation_size, NOISE_Z))
        self.rung_log.append(decision)
        return TrialScheduler.STOP if decision["decision"] == "stopped" else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"NoiseAwareASHA on {TIME_ATTR}: rungs {self.milestones}, noise {self.noise_z} standard errors"
