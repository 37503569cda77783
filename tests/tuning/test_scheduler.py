"""ASHA as carclf runs it: rungs in final-phase epochs, no stop within noise, decisions logged and restored."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from carclf.config import RunSettings
from tuning.scheduler import NoiseAwareASHA, rung_milestones
from tuning.search_space import parse_space
from tuning.search_state import RungLog
from tuning.searcher import StudySearcher


def scheduler(metric="val_accuracy", mode="max", validation_size=100, noise_z=1.0, max_epochs=4, reduction_factor=2):
    """The scheduler as Tune sets it up: built with its rules and its rung log, then given the metric and mode."""
    asha = NoiseAwareASHA(score_metric=metric, max_epochs=max_epochs, grace_period=1, reduction_factor=reduction_factor,
                          validation_size=validation_size, noise_z=noise_z, rung_log=RungLog())
    assert asha.set_search_properties(f"best_{metric}", mode) and asha.metric == f"best_{metric}" and asha.mode == mode
    return asha


def report(asha, trial_id, epoch, final_phase_epochs, score):
    result = {"epoch": epoch, "final_phase_epochs": final_phase_epochs, asha.metric: score}
    return asha.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)


def test_rungs_are_placed_as_ashas():
    assert rung_milestones(1, 4, 2) == [1, 2]
    assert rung_milestones(1, 8, 3) == [1, 3]
    assert rung_milestones(2, 20, 3) == [2, 6, 18]


def test_a_two_phase_trial_is_never_judged_inside_its_warm_up():
    asha = scheduler()
    assert report(asha, "leader", 1, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(asha, "leader", 2, 2, 0.9) == TrialScheduler.CONTINUE
    # head-only warm-up epochs: far below the cut, yet not judged
    assert report(asha, "two-phase", 1, 0, 0.01) == TrialScheduler.CONTINUE
    assert report(asha, "two-phase", 2, 0, 0.01) == TrialScheduler.CONTINUE
    assert "two-phase" not in asha.rung_log.scores.get(1, {}) and "two-phase" not in asha.rung_log.scores.get(2, {})
    # its first fine-tuning epoch is its first rung, judged against the leader's first rung
    assert report(asha, "two-phase", 3, 1, 0.02) == TrialScheduler.STOP
    decision = asha.rung_log.decisions[-1]
    assert decision == {**decision, "trial_id": "two-phase", "rung": 1, "epoch": 3, "cut": 0.9, "decision": "stopped"}


def test_a_trial_within_noise_of_the_cut_goes_on_and_a_clear_loser_stops():
    asha = scheduler(validation_size=100)
    report(asha, "a", 1, 1, 0.80)
    # 5 points under the cut on 100 images: the combined standard error is about 0.059
    assert report(asha, "b", 1, 1, 0.75) == TrialScheduler.CONTINUE
    assert report(asha, "c", 1, 1, 0.30) == TrialScheduler.STOP
    decisions = {d["trial_id"]: d for d in asha.rung_log.decisions}
    assert decisions["a"]["decision"] == "continued" and decisions["a"]["cut"] is None
    assert decisions["b"]["decision"] == "spared" and decisions["b"]["margin"] == pytest.approx(0.0593, abs=1e-3)
    assert decisions["b"]["within_noise"] and not decisions["c"]["within_noise"]
    assert decisions["c"]["decision"] == "stopped"


def test_a_trial_at_its_last_epoch_counts_for_the_cut_but_is_not_stopped():
    asha = scheduler(max_epochs=3)
    report(asha, "a", 1, 1, 0.9)
    report(asha, "a", 2, 2, 0.9)
    assert report(asha, "two-phase", 3, 2, 0.1) == TrialScheduler.CONTINUE  # epoch 3 of 3: it has finished
    assert asha.rung_log.scores[2]["two-phase"] == 0.1 and asha.rung_log.decisions[-1]["decision"] == "continued"


def test_without_a_margin_or_for_a_loss_the_cut_alone_decides():
    plain = scheduler(noise_z=0.0)
    report(plain, "a", 1, 1, 0.80)
    assert report(plain, "b", 1, 1, 0.79) == TrialScheduler.STOP
    loss = scheduler(metric="val_loss", mode="min")
    report(loss, "a", 1, 1, 1.0)
    assert report(loss, "b", 1, 1, 0.9) == TrialScheduler.CONTINUE  # lower is better
    assert report(loss, "c", 1, 1, 1.2) == TrialScheduler.STOP  # a loss has no binomial standard error: no margin


def test_a_restored_search_gives_the_scheduler_back_its_rungs(tmp_path):
    """Ray pickles the searcher and the scheduler together once (tuner.pkl), and saves only the searcher's state
    later: restored, the scheduler shares the searcher's rung log again, refilled from that saved state."""
    asha = scheduler()
    searcher = StudySearcher(parse_space({"learning_rate": {"loguniform": [1e-3, 1e-1]}}, RunSettings(), "exp.toml"),
                             metric="best_val_accuracy", mode="max", max_epochs=4, sampler="random", startup_trials=2,
                             parallel=False, seed=0, start=[], identity={"fingerprint": "f", "source": "s", "run_id": "r"},
                             rung_log=asha.rung_log)
    pickled = pickle.dumps((searcher, asha))  # as Ray keeps them in tuner.pkl, before any decision
    report(asha, "a", 1, 1, 0.9)
    report(asha, "b", 1, 1, 0.85)
    searcher.save(str(tmp_path / "searcher-state.json"))
    restored_searcher, restored = pickle.loads(pickled)
    assert restored.rung_log is restored_searcher.rung_log and not restored.rung_log.decisions
    restored_searcher.restore(str(tmp_path / "searcher-state.json"))
    assert restored.rung_log.scores[1] == {"a": 0.9, "b": 0.85}
    assert report(restored, "c", 1, 1, 0.1) == TrialScheduler.STOP
    assert [d["trial_id"] for d in restored.rung_log.decisions] == ["a", "b", "c"]
