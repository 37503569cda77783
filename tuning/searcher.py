"""carclf's Ray Tune searcher: Optuna's ask and tell on a study it owns, its state saved and restored through Ray.

- Every trial reports `best_<metric>` each epoch (`tuning.trials.Selection`): the study records it
  as the trial's value at that epoch, and as its value when the trial finishes, so Optuna learns
  each trial's best epoch, the value that ranks trials.
- A trial that ends before `max_epochs` without an error (ASHA stopped it) is told PRUNED, with the
  values it reported; an error is FAIL; a trial that finished, or diverged (the worst value), is
  COMPLETE.
- `[[search.start]]` points are enqueued first, so they are the first trials.
- The sampler (`tuning.samplers`) proposes on an in-memory study in which the trials still running
  are RUNNING, so parallel proposals steer away from each other (TPE's constant liar, GP's
  pending points), and in which a trial ASHA stopped is what `search.stopped_trials` says
  (`tuning.stopped_trials`: PRUNED as recorded, or COMPLETE at an estimate of its final value).
- **No repeats.** A proposal that is the same point as a trial already asked for (any state:
  `tuning.search_space.SearchSpace.repeats`) is never run. GP models COMPLETE trials only, so
  after ASHA stops a trial it would propose the same point again. Each proposal is drawn on a scratch
  copy of the study, where a refused one stays RUNNING, so the sampler steers away from it as from
  a trial in progress; after `PROPOSAL_TRIES` repeats a random point is drawn instead (said in the
  log), and the point is then enqueued in the study and asked. A float range too crowded to hold
  another point ends the search early, saying so (a finite space smaller than `num_samples` is
  refused when the experiment is read).
- Its state is plain data (`tuning.search_state`): every trial asked for and ASHA's rung log.
  Restored, the study is rebuilt trial by trial in the same order, so trial numbers are kept, and
  a trial that was running is asked again for its parameters, to be told when it ends. The sampler
  is seeded anew from the search's seed and the number of trials asked, so a resumed search does
  not repeat the draws it made before.

Only public interfaces: Ray's `Searcher` (`suggest`, `on_trial_result`, `on_trial_complete`,
`save`, `restore`, `FINISHED`) and Optuna's `create_study`, `enqueue_trial`, `ask`, `tell`,
`Trial.report`, `create_trial`, `add_trial` and `add_trials`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from tuning.samplers import make_sampler
from tuning.search_space import REPEAT_TOLERANCE, SearchSpace
from tuning.search_state import (
    RAY_TRIAL_ATTRIBUTE,
    STATE_VERSION,
    RungLog,
    checked_state,
    decode_number,
    frozen_trial,
    trial_state,
    write_state,
)
from tuning.stopped_trials import as_modelled
from tuning.study_storage import quiet_study

WAITING = optuna.trial.TrialState.WAITING
PROPOSAL_TRIES = 5  # the sampler's proposals before a repeat is replaced by a random point
RANDOM_TRIES = 1000  # random draws before a float range counts as full
logger = logging.getLogger(__name__)


class StudySearcher(Searcher):
    """Optuna's ask and tell inside Ray Tune (see the module docstring).

    `identity` (the experiment's fingerprint and source, the run's id) goes into the saved state, which
    `--resume` checks before Ray starts; `rung_log` is shared with the scheduler, whose decisions are
    saved with the study.
    """

    def __init__(self, space: SearchSpace, *, metric: str, mode: str, max_epochs: int, sampler: str, startup_trials: int,
                 parallel: bool, seed: int, start: list[dict[str, Any]], identity: dict[str, Any], rung_log: RungLog,
                 stopped_trials: str = "sampler"):
        super().__init__(metric=metric, mode=mode)
        self.space, self.distributions = space, space.optuna_distributions()
        self.max_epochs, self.start = max_epochs, [dict(point) for point in start]
        self.sampler_settings = {"name": sampler, "startup_trials": startup_trials, "parallel": parallel, "seed": seed,
                                 "stopped_trials": stopped_trials}
        self.identity = {**identity, "direction": "maximize" if mode == "max" else "minimize"}
        self.rung_log = rung_log
        self.open({"trials": [], "rungs": []})

    def open(self, state: dict[str, Any]) -> None:
        """Build the study from a saved state: its trials in order, then the start points not asked for yet."""
        asked = state["trials"]
        settings = self.sampler_settings
        sampler = make_sampler(settings["name"], settings["startup_trials"], settings["parallel"], settings["seed"] + len(asked))
        self.study = quiet_study(direction=self.identity["direction"], sampler=sampler)
        self.running: dict[str, optuna.Trial] = {}  # Ray's trial id → the study's trial, until it is told
        for saved in asked:
            if saved["state"] != "RUNNING":
                self.study.add_trial(frozen_trial(saved, self.distributions))
                continue
            self.study.enqueue_trial(saved["params"])
            trial = self.ask(saved["ray_trial_id"])
            for step, value in saved["intermediate"]:
                trial.report(decode_number(value), int(step))
        for point in self.start[len(asked):]:
            self.study.enqueue_trial(point)
        self.rung_log.load(state["rungs"])

    def ask(self, trial_id: str) -> optuna.Trial:
        trial = self.study.ask(self.distributions)
        trial.set_user_attr(RAY_TRIAL_ATTRIBUTE, trial_id)
        self.running[trial_id] = trial
        return trial

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if not self.study.get_trials(deepcopy=False, states=(WAITING,)):  # no start point left to run: propose one
            point = self.propose()
            if point is None:
                return Searcher.FINISHED
            self.study.enqueue_trial(point)
        return dict(self.ask(trial_id).params)

    def propose(self) -> dict[str, Any] | None:
        """The sampler's next point that repeats no trial asked for, a random one after `PROPOSAL_TRIES` repeats, or None
        when the space holds no other point (see the module docstring)."""
        asked = self.study.get_trials(deepcopy=False)  # none WAITING: `suggest` proposes only when no start point is left
        scratch = quiet_study(direction=self.identity["direction"], sampler=self.study.sampler)
        scratch.add_trials(as_modelled(asked, self.sampler_settings.get("stopped_trials", "sampler")))
        for _ in range(PROPOSAL_TRIES):
            point = scratch.ask(self.distributions).params  # left RUNNING in the scratch study: the next ask avoids it
            if not self.repeats_a_trial(point, asked):
                return point
        draws = quiet_study(sampler=optuna.samplers.RandomSampler(seed=self.sampler_settings["seed"] + len(asked)))
        for _ in range(RANDOM_TRIES):
            point = draws.ask(self.distributions).params
            if not self.repeats_a_trial(point, asked):
                logger.info("the sampler proposed only repeats of earlier trials %d times: trial %d takes a random point instead",
                            PROPOSAL_TRIES, len(asked))
                return point
        logger.warning("no point of [search.space] is left that repeats no earlier trial (floats within %s of their range "
                       "are one point): the search ends after %d trials", f"{REPEAT_TOLERANCE:.0%}", len(asked))
        return None

    def repeats_a_trial(self, point: dict[str, Any], asked: list[optuna.trial.FrozenTrial]) -> bool:
        return any(self.space.repeats(point, trial.params) for trial in asked)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial, value = self.running.get(trial_id), result.get(self.metric)
        if trial is not None and value is not None and math.isfinite(value):
            trial.report(float(value), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self.running:
            return
        if result:  # Tune hands a trial's last result to this method only
            self.on_trial_result(trial_id, result)
        trial = self.running.pop(trial_id)
        value = result.get(self.metric) if result else None
        if error or value is None or math.isnan(value):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif result.get("diverged") or result.get("epoch", 0) >= self.max_epochs:
            self.study.tell(trial, float(value))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    def saved_state(self) -> dict[str, Any]:
        """The state as plain data (`tuning.search_state`)."""
        asked = [trial_state(trial) for trial in self.study.get_trials(deepcopy=False) if trial.state != WAITING]
        return {"version": STATE_VERSION, "identity": self.identity, "trials": asked, "rungs": list(self.rung_log.decisions)}

    def save(self, checkpoint_path: str) -> None:
        write_state(checkpoint_path, self.saved_state())

    def restore(self, checkpoint_path: str) -> None:
        self.open(checked_state(json.loads(Path(checkpoint_path).read_text())))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (into Ray's tuner.pkl) as its settings and saved state; the rung log stays the object it shares."""
        kept = {key: value for key, value in self.__dict__.items() if key not in ("study", "running")}
        return {**kept, "saved": self.saved_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("saved")
        self.__dict__.update(state)
        self.open(saved)
