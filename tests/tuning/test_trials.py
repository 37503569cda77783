"""The trials table's rules on hand-made tables: statuses, the stated tie rule, the gain over the start."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tuning.trials import DeliveredTrial, Selection, against_start, best_trial, trial_summaries, trials_table

SELECTION = Selection("val_accuracy", "max")
SPACE = ["learning_rate"]


def trial_rows(trial_id: str, number: int, accuracies: list[float], learning_rate: float) -> pd.DataFrame:
    best = pd.Series(accuracies).cummax()
    return pd.DataFrame({
        "trial_id": trial_id, "trial_path": f"/runs/x/CarClassifierTrainable_{trial_id}_{number}_learning_rate={learning_rate}",
        "epoch": range(1, len(accuracies) + 1), "val_accuracy": accuracies, "best_val_accuracy": best,
        "best_epoch": [int(best[: i + 1].idxmax()) + 1 for i in range(len(accuracies))],
        "status": "finished", "config/learning_rate": learning_rate,
    })


def tied_table() -> pd.DataFrame:
    """Three trials tied at 0.5: "late" reached it at epoch 3, "first" and "second" at epoch 2 (trials 4 and 7)."""
    return pd.concat([
        trial_rows("second", 7, [0.2, 0.5, 0.5], 0.02),
        trial_rows("late", 1, [0.1, 0.3, 0.5], 0.03),
        trial_rows("first", 4, [0.3, 0.5, 0.4], 0.01),
        trial_rows("worse", 2, [0.4, 0.45, 0.45], 0.04),
    ], ignore_index=True)


def test_ties_go_to_fewer_images_then_the_earlier_trial_whatever_the_row_order():
    table = tied_table()
    assert list(trial_summaries(table, SELECTION).index) == ["first", "second", "late", "worse"]
    for seed in range(20):
        shuffled = table.sample(frac=1.0, random_state=seed)
        assert list(trial_summaries(shuffled, SELECTION).index) == ["first", "second", "late", "worse"]
        assert best_trial(shuffled, SELECTION, SPACE) == DeliveredTrial("first", {"learning_rate": 0.01}, 2, 0.5,
                                                                 "CarClassifierTrainable_first_4_learning_rate=0.01")


def result(trial_id: str, epochs: int, *, error: str | None = None, diverged: bool = False) -> SimpleNamespace:
    """What `trials_table` reads of a Ray `Result`."""
    frame = pd.DataFrame({"epoch": range(1, epochs + 1), "trial_id": trial_id, "diverged": [i == epochs and diverged for i in range(1, epochs + 1)]})
    return SimpleNamespace(metrics_dataframe=frame if epochs else None, metrics={"trial_id": trial_id} if epochs else {},
                           path=f"/runs/x/CarClassifierTrainable_{trial_id}_1", error=error, config={"learning_rate": 0.01})


def test_every_way_a_trial_ends_is_counted_apart():
    results = [result("done", 4), result("asha", 2), result("cut", 3), result("nan", 2, diverged=True),
               result("broke", 1, error="RuntimeError: boom"), result("never", 0)]
    table = trials_table(results, max_epochs=4, stopped_early={"asha"})
    statuses = table.groupby("trial_id")["status"].first().to_dict()
    assert statuses == {"done": "finished", "asha": "stopped early", "cut": "interrupted", "nan": "diverged",
                        "broke": "failed", "CarClassifierTrainable_never_1": "never started"}


def test_gain_over_the_starting_configuration_with_its_standard_error():
    table = tied_table()
    start = [{"learning_rate": 0.04}]  # "worse", best 0.45
    gain = against_start(table, start, SELECTION, validation_size=400)
    assert gain["trial_id"] == "first" and gain["start_trial_id"] == "worse"
    assert gain["gain"] == pytest.approx(0.05)
    assert gain["standard_error"] == pytest.approx((0.25 / 400 + 0.2475 / 400) ** 0.5)
    assert gain["within_noise"] and "nothing better than the starting configuration within noise" in gain["statement"]
    clear = against_start(table, start, SELECTION, validation_size=40_000)
    assert not clear["within_noise"] and "beats the starting configuration by +0.050" in clear["statement"]
    best_is_start = against_start(table, [{"learning_rate": 0.01}], SELECTION, validation_size=400)
    assert best_is_start["within_noise"] and "starting configuration is the best trial" in best_is_start["statement"]
    assert against_start(table, [], SELECTION, validation_size=400) is None


def test_an_epoch_reported_again_after_a_restart_keeps_its_later_report():
    """Ray's results of a trial restarted from its epoch-1 checkpoint after a resume: epochs 2 and 3 twice."""
    frame = pd.DataFrame({"epoch": [1, 2, 3, 2, 3, 4], "val_loss": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], "trial_id": "again"})
    again = SimpleNamespace(metrics_dataframe=frame, metrics={"trial_id": "again"}, path="/runs/x/CarClassifierTrainable_again_1",
                            error=None, config={"learning_rate": 0.01})
    table = trials_table([again], max_epochs=4)
    assert table["epoch"].tolist() == [1, 2, 3, 4] and table["val_loss"].tolist() == [1.0, 0.7, 0.6, 0.5]
    assert set(table["status"]) == {"finished"}
