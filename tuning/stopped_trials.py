"""What the sampler is told of a trial that early stopping cut short: `search.stopped_trials`.

ASHA stops trials after a few epochs, and the study records them as PRUNED with the values they
reported. Optuna's samplers use such trials little: GPSampler models COMPLETE trials only, so a
stopped trial teaches it nothing, and TPE ranks pruned trials below every finished one by the step
they reached. A user pays for every epoch a stopped trial trained.

- "sampler": the sampler sees the study as it is (its own handling of PRUNED trials).
- "estimate": the sampler proposes from a copy of the study in which each stopped trial is
  COMPLETE, with an estimate of the value it would have finished with: its value at the epoch it
  was stopped at, plus the median gain from that epoch to the end of the trials that did finish
  (the workaround Optuna's maintainers suggest for fidelity-aware search: report an estimate of the
  final value). With no finished trial that reported that epoch, the estimate is the value so far,
  which the objective (the best epoch so far) can only improve on. The study itself keeps the stop's
  record: PRUNED, with every epoch's value.
"""

from __future__ import annotations

import math
import statistics

import optuna

STOPPED_TRIALS = ("sampler", "estimate")
PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def estimated_final(stopped: optuna.trial.FrozenTrial, finished: list[optuna.trial.FrozenTrial]) -> float | None:
    """The value `stopped` would have finished with (see the module docstring); None when it reported no finite value."""
    reported = {step: value for step, value in stopped.intermediate_values.items() if math.isfinite(value)}
    if not reported:
        return None
    step = max(reported)
    gains = [trial.value - trial.intermediate_values[step] for trial in finished
             if step in trial.intermediate_values and math.isfinite(trial.value) and math.isfinite(trial.intermediate_values[step])]
    return reported[step] + (statistics.median(gains) if gains else 0.0)


def as_modelled(trials: list[optuna.trial.FrozenTrial], how: str) -> list[optuna.trial.FrozenTrial]:
    """The trials a sampler proposes from: `trials` as they are ("sampler"), or with each stopped trial COMPLETE at its
    estimated final value ("estimate")."""
    if how == "sampler":
        return trials
    finished = [trial for trial in trials if trial.state == COMPLETE]
    modelled = []
    for trial in trials:
        value = estimated_final(trial, finished) if trial.state == PRUNED else None
        if value is None:
            modelled.append(trial)
            continue
        modelled.append(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=value,
                                                  intermediate_values=trial.intermediate_values, user_attrs=trial.user_attrs,
                                                  state=COMPLETE))
    return modelled
