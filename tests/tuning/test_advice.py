"""Advice for the next run, on hand-made run folders: one whose numbers call for every piece of advice, and one whose
numbers call for none. The demo's experiment: learning_rate loguniform [0.001, 0.05], unfreeze_depth randint [0, 4],
scheduler.max_epochs 4; the tiny dataset has 8 validation images."""

from __future__ import annotations

import json

import pandas as pd

from carclf.data.table import save_index
from tuning.experiment import load_experiment
from tuning.report import build_report
from tuning.report_html import render_html

START = {"batch_size": 16, "learning_rate": 0.005, "lr_decay": 0.0001, "unfreeze_depth": 1, "head_epochs": 0}


def write_run(folder, index, trials: dict, verdict: str) -> dict:
    """A run folder of `trials` ({trial_id: (hyperparameters, status, val_accuracy per epoch)}); the report's numbers."""
    start = ", ".join(f"{key} = {value}" for key, value in START.items())
    (folder / "experiment.json").write_text(json.dumps(load_experiment(overrides=[f"search.start=[{{ {start} }}]"]).to_dict()))
    save_index(index, folder / "dataset.parquet")
    rows = []
    for number, (trial_id, (config, status, accuracies)) in enumerate(trials.items(), start=1):
        for epoch, accuracy in enumerate(accuracies, start=1):
            best = max(accuracies[:epoch])
            rows.append({"trial_id": trial_id, "trial_path": f"/x/CarClassifierTrainable_{trial_id}_{number}_a", "status": status,
                         "epoch": epoch, "val_accuracy": accuracy, "best_val_accuracy": best,
                         "best_epoch": accuracies.index(best) + 1, **{f"config/{key}": value for key, value in config.items()}})
    pd.DataFrame(rows).to_parquet(folder / "trials.parquet")
    transfer = {"weights": "w.h5", "pretrained_accuracy": 0.5, "random_accuracy": 0.625 if verdict == "not better" else 0.125,
                "validation_size": 8, "standard_error": 0.2, "verdict": verdict, "seconds": 1.0}
    (folder / "search.json").write_text(json.dumps({"wall_time_s": 10.0, "sampler": "tpe", "transfer": transfer}))
    return build_report(folder)


def test_a_run_that_calls_for_every_piece_of_advice_gets_each(tiny_index, tmp_path):
    """The winner still rising at epoch 4 of 4, at the top of the learning-rate range and of unfreeze_depth's, within
    noise of the start (0.75 against 0.625 on 8 images), from a backbone the probe found no better than random."""
    winner = {**START, "learning_rate": 0.049, "unfreeze_depth": 4}
    numbers, extras = write_run(tmp_path, tiny_index, {
        "w": (winner, "finished", [0.25, 0.5, 0.625, 0.75]),
        "s": (START, "finished", [0.5, 0.625, 0.625, 0.625]),
        "a": ({**START, "learning_rate": 0.002}, "stopped early", [0.125])}, verdict="not better")
    advice = {item["key"]: item["advice"] for item in numbers["advice"]}
    assert list(advice) == ["scheduler.max_epochs", "search.space.learning_rate", "search.space.unfreeze_depth",
                            "data.validation_fraction", "model.weights", "search.start"]
    assert "1 of the 3 top trials, the winner among them, scored their best at their last epoch, 4" in advice["scheduler.max_epochs"]
    assert "raise scheduler.max_epochs (for example to 8)" in advice["scheduler.max_epochs"]
    assert "0.049 sits at the top of the searched range {'loguniform': [0.001, 0.05]}" in advice["search.space.learning_rate"]
    assert "widen the range past 0.05 (for example to 0.1)" in advice["search.space.learning_rate"]
    assert "widen the range past 4 (for example to 5)" in advice["search.space.unfreeze_depth"]
    # 1.96^2 x (0.75 x 0.25 + 0.625 x 0.375) / 0.125^2 = 103.7
    assert "trial s is within noise of the best on 8 validation images" in advice["data.validation_fraction"]
    assert "(0.125 apart) takes about 104 validation images" in advice["data.validation_fraction"]
    assert "(0.500 against 0.625)" in advice["model.weights"]
    assert "nothing better than the starting configuration within noise" in advice["search.start"]
    page = render_html(numbers, extras)
    block = page[page.index('<div class="advice">'):page.index("<h2>Experiment and data</h2>")]  # under the headline
    assert block.count("<li>") == 6 and "<code>search.space.learning_rate</code>" in block


def test_a_run_that_calls_for_none_gets_no_advice(tiny_index, tmp_path):
    """The winner peaked at epoch 2 of 4, in the middle of the learning-rate range, at unfreeze_depth 0 (the bottom of its
    range, but no depth is below 0), clear of the start (0.875 against 0.125 on 8 images); transfer better."""
    winner = {**START, "learning_rate": 0.007, "unfreeze_depth": 0}
    numbers, extras = write_run(tmp_path, tiny_index, {
        "w": (winner, "finished", [0.5, 0.875, 0.75, 0.75]),
        "s": (START, "finished", [0.125, 0.125, 0.125, 0.125])}, verdict="better")
    assert numbers["advice"] == []
    assert '<div class="advice">' not in render_html(numbers, extras)
