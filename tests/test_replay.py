"""The replay benchmark (benchmarks/replay.py) runs whole searches through carclf's own searcher and scheduler.

The curves here are made by hand, so what each search must do is known: configurations with a
larger learning rate learn faster and further, the starting configuration is mediocre, and one
configuration diverges. Nothing trains; every search takes well under a second.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import replay  # noqa: E402
from search_quality import DIGITS_START, experiment_file  # noqa: E402

VALIDATION_SIZE = 300
EPOCH_IMAGES = 1000


def quality(params: dict) -> float:
    """How far a configuration learns: 0 at the smallest learning rate of the digits space, 1 at the largest."""
    return math.log(params["learning_rate"] / 0.001) / math.log(50)


def curve(number: int, params: dict, seed: int = 0, diverge_at: int | None = None) -> replay.Curve:
    epochs = []
    for epoch in range(1, 9):
        value = 0.1 + 0.85 * quality(params) * (1 - math.exp(-epoch / 2)) + 0.01 * seed
        diverged = diverge_at is not None and epoch >= diverge_at
        epochs.append({"epoch": epoch, "phase": "fine_tune", "final_phase_epochs": epoch, "val_accuracy": None if diverged else value,
                       "test_accuracy": None if diverged else value - 0.02, "seconds": 10.0 + params["batch_size"] / 16,
                       "images_seen": epoch * EPOCH_IMAGES, "diverged": diverged})
        if diverged:
            break
    return replay.Curve(number, seed, params, epochs)


def table() -> list[replay.Curve]:
    """The start point, then a grid over learning rate and batch size; one configuration diverges, one has two seeds."""
    curves = [curve(0, DIGITS_START), curve(0, DIGITS_START, seed=1)]
    number = 1
    for learning_rate in (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05):
        for batch_size in (16, 32):
            params = {"batch_size": batch_size, "learning_rate": learning_rate, "lr_decay": 0.0001, "unfreeze_depth": 12, "momentum": 0.9}
            curves.append(curve(number, params, diverge_at=3 if (learning_rate, batch_size) == (0.05, 32) else None))
            number += 1
    return curves


def search(strategy: str, seed: int, tmp_path: Path, budget: int = 8) -> dict:
    experiment = replay.replay_experiment(experiment_file(tmp_path, "digits"), strategy, budget, seed)
    return replay.replay_search(experiment, table(), VALIDATION_SIZE)


def test_a_point_maps_to_the_nearest_recorded_configuration_in_log_space(tmp_path):
    space = replay.replay_experiment(experiment_file(tmp_path, "digits"), "random", 8, 0).search.space
    recorded = {curve.configuration: curve.params for curve in table()}
    point = {"batch_size": 16, "learning_rate": 0.0029, "lr_decay": 0.0001, "unfreeze_depth": 12, "momentum": 0.9}
    # 0.0029 is nearer 0.002 on a linear scale, nearer 0.004 on the log scale a loguniform range is searched on
    assert recorded[replay.nearest(space, point, recorded)]["learning_rate"] == 0.004
    point["batch_size"] = 32  # a choice counts fully: the same learning rate with batch 32 is the other configuration
    assert recorded[replay.nearest(space, point, recorded)] == {**point, "learning_rate": 0.004}
    assert replay.nearest(space, dict(DIGITS_START), recorded) == 0


@pytest.mark.parametrize("strategy", ["tpe+asha", "tpe+asha+estimate"])
def test_early_stopping_is_carclfs_scheduler_and_the_study_records_each_stop(strategy, tmp_path):
    stopped = search(strategy, 0, tmp_path)
    full = search("tpe", 0, tmp_path)
    statuses = [trial["status"] for trial in stopped["trials"]]
    assert len(stopped["trials"]) == 8 and stopped["trials"][0]["configuration"] == 0  # [[search.start]] is the first trial
    assert statuses.count("stopped") == stopped["rung_stops"] > 0  # every stop is a decision of NoiseAwareASHA's rung log
    # the searcher told the study: a stopped trial PRUNED, a diverged or finished one COMPLETE
    assert stopped["study"].get("PRUNED", 0) == statuses.count("stopped")
    assert stopped["study"].get("COMPLETE", 0) == statuses.count("finished") + statuses.count("diverged")
    assert all(trial["epochs"] < 8 for trial in stopped["trials"] if trial["status"] == "stopped")
    assert {trial["status"] for trial in full["trials"]} <= {"finished", "diverged"} and full["rung_stops"] == 0
    assert stopped["total_images"] < full["total_images"]
    assert full["total_images"] == sum(trial["epochs"] for trial in full["trials"]) * EPOCH_IMAGES


def test_the_winner_is_the_best_trial_and_its_test_accuracy_is_its_best_epochs(tmp_path):
    result = search("random", 3, tmp_path)
    finite = [trial for trial in result["trials"] if trial["status"] != "diverged"]
    best = max(finite, key=lambda trial: trial["best"])
    assert result["final_best"] == best["best"] == result["best"][-1]
    winner = result["winner"]
    assert winner["configuration"] == best["configuration"] and winner["test_accuracy"] == pytest.approx(best["best"] - 0.02)
    assert result["images"] == sorted(result["images"]) and result["images"][-1] == result["total_images"]


def test_a_search_replays_the_same_for_the_same_seed_and_differently_for_another(tmp_path):
    first, again, other = search("tpe+asha", 1, tmp_path), search("tpe+asha", 1, tmp_path), search("tpe+asha", 2, tmp_path)
    assert first == again
    assert [t["configuration"] for t in first["trials"]] != [t["configuration"] for t in other["trials"]]


def test_the_summary_counts_a_search_that_never_reaches_randoms_best_as_a_miss():
    def made(seed: int, images: list[int], best: list[float]) -> dict:
        return {"seed": seed, "images": images, "best": best, "total_images": images[-1], "final_best": best[-1],
                "winner": {"test_accuracy": best[-1]}, "distinct_configurations": 2}

    cells = {"8/random": [made(0, [100, 200], [0.5, 0.9]), made(1, [100, 200], [0.5, 0.9])],
             "8/tpe": [made(0, [50, 300], [0.895, 0.95]), made(1, [100, 400], [0.5, 0.7])]}
    row = next(row for row in replay.summarize(cells) if row["strategy"] == "tpe")
    assert row["reach_rate"] == "1/2"  # seed 1 never came within 1 point of 0.9
    assert row["share_of_random_images"] == "0.250 ± 0.000"  # seed 0: 50 of random's 200 images
