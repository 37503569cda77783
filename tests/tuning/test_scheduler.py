"""ASHA as carclf runs it: rungs in final-phase epochs, no stop within noise, decisions logged and restored."""

from __future__ import annotations

import json
import pickle
import shutil
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from tuning.run_folder import RunFolder
from tuning.scheduler import NoiseAwareASHA, rung_milestones


def scheduler(tmp_path, metric="val_accuracy", mode="max", validation_size=100, noise_z=1.0, max_epochs=4, reduction_factor=2):
    return NoiseAwareASHA(metric=f"best_{metric}", mode=mode, score_metric=metric, max_epochs=max_epochs, grace_period=1,
                          reduction_factor=reduction_factor, validation_size=validation_size, noise_z=noise_z, run_dir=tmp_path)


def read_rung_decisions(run_dir):
    return RunFolder(run_dir).read_rung_decisions()


def report(asha, trial_id, epoch, final_phase_epochs, score):
    result = {"epoch": epoch, "final_phase_epochs": final_phase_epochs, asha._metric: score}
    return asha.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)


def test_rungs_are_placed_as_ashas():
    assert rung_milestones(1, 4, 2) == [1, 2]
    assert rung_milestones(1, 8, 3) == [1, 3]
    assert rung_milestones(2, 20, 3) == [2, 6, 18]


def test_a_two_phase_trial_is_never_judged_inside_its_warm_up(tmp_path):
    asha = scheduler(tmp_path)
    assert report(asha, "leader", 1, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(asha, "leader", 2, 2, 0.9) == TrialScheduler.CONTINUE
    # head-only warm-up epochs: far below the cut, yet not judged
    assert report(asha, "two-phase", 1, 0, 0.01) == TrialScheduler.CONTINUE
    assert report(asha, "two-phase", 2, 0, 0.01) == TrialScheduler.CONTINUE
    assert "two-phase" not in asha.rungs[1] and "two-phase" not in asha.rungs[2]
    # its first fine-tuning epoch is its first rung, judged against the leader's first rung
    assert report(asha, "two-phase", 3, 1, 0.02) == TrialScheduler.STOP
    decision = read_rung_decisions(tmp_path)[-1]
    assert decision == {**decision, "trial_id": "two-phase", "rung": 1, "epoch": 3, "cut": 0.9, "decision": "stopped"}


def test_a_trial_within_noise_of_the_cut_goes_on_and_a_clear_loser_stops(tmp_path):
    asha = scheduler(tmp_path, validation_size=100)
    report(asha, "a", 1, 1, 0.80)
    # 5 points under the cut on 100 images: the combined standard error is about 0.059
    assert report(asha, "b", 1, 1, 0.75) == TrialScheduler.CONTINUE
    assert report(asha, "c", 1, 1, 0.30) == TrialScheduler.STOP
    decisions = {d["trial_id"]: d for d in read_rung_decisions(tmp_path)}
    assert decisions["a"]["decision"] == "continued" and decisions["a"]["cut"] is None
    assert decisions["b"]["decision"] == "spared" and decisions["b"]["margin"] == pytest.approx(0.0593, abs=1e-3)
    assert decisions["b"]["within_noise"] and not decisions["c"]["within_noise"]
    assert decisions["c"]["decision"] == "stopped"


def test_a_trial_at_its_last_epoch_counts_for_the_cut_but_is_not_stopped(tmp_path):
    asha = scheduler(tmp_path, max_epochs=3)
    report(asha, "a", 1, 1, 0.9)
    report(asha, "a", 2, 2, 0.9)
    assert report(asha, "two-phase", 3, 2, 0.1) == TrialScheduler.CONTINUE  # epoch 3 of 3: it has finished
    assert asha.rungs[2]["two-phase"] == 0.1 and read_rung_decisions(tmp_path)[-1]["decision"] == "continued"


def test_without_a_margin_or_for_a_loss_the_cut_alone_decides(tmp_path):
    plain = scheduler(tmp_path / "plain", noise_z=0.0)
    (tmp_path / "plain").mkdir()
    report(plain, "a", 1, 1, 0.80)
    assert report(plain, "b", 1, 1, 0.79) == TrialScheduler.STOP
    loss = scheduler(tmp_path / "loss", metric="val_loss", mode="min")
    (tmp_path / "loss").mkdir()
    report(loss, "a", 1, 1, 1.0)
    assert report(loss, "b", 1, 1, 0.9) == TrialScheduler.CONTINUE  # lower is better
    assert report(loss, "c", 1, 1, 1.2) == TrialScheduler.STOP  # a loss has no binomial standard error: no margin


def test_a_restored_scheduler_rebuilds_its_rungs_from_the_log_where_the_run_is_now(tmp_path):
    old, new = tmp_path / "old", tmp_path / "moved"
    old.mkdir()
    asha = scheduler(old)
    report(asha, "a", 1, 1, 0.9)
    saved = pickle.dumps(asha)  # as Ray keeps it in tuner.pkl, before later decisions
    report(asha, "b", 1, 1, 0.85)
    shutil.move(old, new)
    NoiseAwareASHA.relocated_run_dir = new
    try:
        restored = pickle.loads(saved)
    finally:
        NoiseAwareASHA.relocated_run_dir = None
    assert restored.log_path == RunFolder(new).rungs_file
    assert restored.rungs[1] == {"a": 0.9, "b": 0.85}
    assert report(restored, "c", 1, 1, 0.1) == TrialScheduler.STOP
    assert [json.loads(line)["trial_id"] for line in (RunFolder(new).rungs_file).read_text().splitlines()] == ["a", "b", "c"]
