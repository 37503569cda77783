"""What the console says while trials run: one line per trial event and a progress line, in place of Ray's tables.

Ray Tune's own output (`verbose=1`) prints every trial's whole configuration and a result table of
some thirty rows (`time_this_iter_s`, `pid` ...), several hundred lines in a demo, among which the
plan and the verdicts are lost. The search runs Tune silently (`--ray-verbose 1` brings Ray's tables
back) and this callback says what a user follows:

    trial 4c1e2_00001 started: batch_size=16 learning_rate=0.0123 lr_decay=0.000101 unfreeze_depth=2 head_epochs=0
    trial 4c1e2_00001 rung 1 (epoch 1): val_accuracy 0.620, the cut 0.700 less 0.065 of noise: stopped
    trial 4c1e2_00002 diverged at epoch 3: it scores the worst value
    trial 4c1e2_00003 finished after 4 epochs: best val_accuracy 0.780 at epoch 3
    progress: 3 of 6 trials ended (1 stopped early), 2 running; best val_accuracy 0.780 (trial 4c1e2_00003); 125 s so far

A rung line reads the decision ASHA just made (`tuning.scheduler`), which Ray asks for before it
calls this callback with the same result, so each decision is said once, also after a resume.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from tuning.search_state import RungLog
from tuning.trials import Selection

PROGRESS_SECONDS = 60.0
ENDED = ("TERMINATED", "ERROR")


def describe_config(config: dict[str, Any], keys: list[str]) -> str:
    """`batch_size=16 learning_rate=0.0123`: the searched keys, floats to 3 significant digits."""
    return " ".join(f"{key}={config[key]:.3g}" if isinstance(config.get(key), float) else f"{key}={config.get(key)}" for key in keys)


def describe_decision(decision: dict[str, Any], metric: str) -> str:
    """`rung 1 (epoch 1): val_accuracy 0.620, the cut 0.700 less 0.065 of noise: stopped`."""
    text = f"rung {decision['rung']} (epoch {decision['epoch']}): {metric} {decision['score']:.3f}"
    if decision.get("cut") is not None:
        text += f", the cut {decision['cut']:.3f}"
        if decision.get("margin"):
            text += f" less {decision['margin']:.3f} of noise"
    return f"{text}: {decision['decision']}"


class TrialEvents(tune.Callback):
    """Prints a line when a trial starts, is judged at a rung, diverges, ends or fails, and a progress line each minute."""

    def __init__(self, selection: Selection, space_keys: list[str], rung_log: RungLog | None,
                 progress_seconds: float = PROGRESS_SECONDS):
        self.selection, self.space_keys, self.rung_log = selection, space_keys, rung_log
        self.progress_seconds = progress_seconds
        self.started = self.last_progress = time.monotonic()

    def setup(self, **info) -> None:
        self.started = self.last_progress = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        say(f"trial {trial.trial_id} started: {describe_config(trial.config, self.space_keys)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        decision = self.decision_for(trial.trial_id, result.get("epoch"))
        if decision is not None:
            say(f"trial {trial.trial_id} {describe_decision(decision, self.selection.metric)}")
        if result.get("diverged"):
            say(f"trial {trial.trial_id} diverged at epoch {result.get('epoch')}: it scores the worst value")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("diverged"):
            return  # said when it happened
        epochs, best_epoch = result.get("epoch"), result.get("best_epoch")
        stopped = trial.trial_id in self.stopped_trials()
        best = f"best {self.selection.metric} {result[self.selection.objective]:.3f} at epoch {best_epoch}" \
            if best_epoch is not None and result.get(self.selection.objective) is not None else f"no {self.selection.metric} scored"
        say(f"trial {trial.trial_id} {'stopped early' if stopped else 'finished'} after {epochs} epoch(s): {best}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        say(f"trial {trial.trial_id} failed (its error is in {trial.path}/error.txt)")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self.last_progress >= self.progress_seconds:
            self.last_progress = time.monotonic()
            say(self.progress(trials))

    def progress(self, trials: list) -> str:
        """`progress: 3 of 6 trials ended (1 stopped early), 2 running; best val_accuracy 0.780 (trial ...); 125 s so far`.

        Each trial's best so far is its last report's objective (`best_<metric>`), so nothing is kept here."""
        ended = [trial for trial in trials if trial.status in ENDED]
        running = sum(trial.status == "RUNNING" for trial in trials)
        stopped = len(self.stopped_trials() & {trial.trial_id for trial in ended})
        text = f"progress: {len(ended)} of {len(trials)} trials ended" + (f" ({stopped} stopped early)" if stopped else "")
        text += f", {running} running"
        scores = {trial.trial_id: (trial.last_result or {}).get(self.selection.objective) for trial in trials}
        scores = {trial_id: value for trial_id, value in scores.items() if value is not None and math.isfinite(value)}
        if scores:
            leader = (max if self.selection.mode == "max" else min)(scores, key=scores.get)
            text += f"; best {self.selection.metric} {scores[leader]:.3f} (trial {leader})"
        return f"{text}; {time.monotonic() - self.started:.0f} s so far"

    def decision_for(self, trial_id: str, epoch: int | None) -> dict[str, Any] | None:
        """The rung decision ASHA made on this trial's report of `epoch`, if it made one."""
        if self.rung_log is None or epoch is None:
            return None
        for decision in reversed(self.rung_log.decisions):
            if decision["trial_id"] == trial_id:
                return decision if decision["epoch"] == epoch else None
        return None

    def stopped_trials(self) -> set[str]:
        """The trials ASHA stopped at a rung, from its log."""
        return {d["trial_id"] for d in self.rung_log.decisions if d["decision"] == "stopped"} if self.rung_log is not None else set()


def say(line: str) -> None:
    print(line, flush=True)
