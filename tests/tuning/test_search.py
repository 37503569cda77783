"""`python -m tuning.search` end to end: Ray, Optuna, ASHA, retraining, resume, and refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import keras
import pandas as pd
import pytest

from tests.tuning.conftest import run, search_command

pytestmark = pytest.mark.filterwarnings("ignore")


def test_search_runs_trials_stops_some_early_and_saves_the_best_model(finished_run):
    run_dir, result = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    per_trial = trials.groupby("trial_id").agg(epochs=("epoch", "max"), stopped=("stopped_early", "first"))
    assert len(per_trial) == 6  # Ray ran every trial
    assert (per_trial["epochs"] < 3).any() and per_trial["stopped"].any()  # ASHA stopped one before the last epoch
    assert (per_trial["epochs"] == 3).any()
    configs = trials.groupby("trial_id")[["config/learning_rate", "config/lr_decay"]].first()
    assert configs["config/learning_rate"].nunique() == 6  # sampled by Optuna, not a grid
    assert configs["config/learning_rate"].between(0.001, 0.1).all()
    assert configs["config/lr_decay"].between(0.00001, 0.001).all()
    assert list(run_dir.glob("searcher-state-*.pkl"))  # OptunaSearch's saved state

    model = keras.models.load_model(run_dir / "best" / "model.keras", safe_mode=True)
    labels = json.loads((run_dir / "best" / "labels.json").read_text())["class_names"]
    assert model.output_shape == (None, len(labels)) == (None, 4)
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    assert metrics["test"]["labeled"] and metrics["test"]["count"] == 12
    assert 0 <= metrics["test"]["accuracy"] <= 1 and len(metrics["test"]["confusion_matrix"]) == 4
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert metrics["retrain_epochs"] == per_trial["epochs"].max() or metrics["retrain_epochs"] in per_trial["epochs"].tolist()
    assert set(config["hyperparameters"]) == {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth"}
    assert "Ray dashboard: http://127.0.0.1:" in result.stdout
    assert "top 5 of 6 trials by val_loss" in result.stdout and "test accuracy" in result.stdout
    assert (run_dir / "dataset.parquet").is_file() and (run_dir / "report.json").is_file()


def test_start_point_is_evaluated_first(finished_run):
    run_dir, _ = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet").groupby("trial_id").first()
    first = trials[trials["trial_path"].str.contains(r"_1_batch_size=")].iloc[0]
    start = {"config/batch_size": 8, "config/learning_rate": 0.005, "config/lr_decay": 0.0001, "config/unfreeze_depth": 0}
    assert {key: first[key] for key in start} == pytest.approx(start)


def test_existing_run_needs_resume(finished_run, tiny_cars):
    run_dir, _ = finished_run
    result = run(search_command(tiny_cars, run_dir.parent, run_dir.name, "--no-retrain"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir}: a run with this name exists; pass --resume")


def test_missing_gpu_stops_at_once(tiny_cars, tmp_path):
    started = time.monotonic()
    result = run(search_command(tiny_cars, tmp_path, "gpu", "--gpus-per-trial", "0.5"), timeout=180)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "asks for 0.5 GPU but no node of this Ray cluster has any GPU" in last and "--gpus-per-trial 0" in last
    assert time.monotonic() - started < 120


def test_invalid_experiment_never_starts_ray(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "bad", "--set", "train.learning_rate=-0.1"), timeout=120)
    assert result.returncode == 2
    assert "demo.toml [train]: key learning_rate must be > 0" in result.stderr.strip().splitlines()[-1]
    assert "Ray dashboard" not in result.stdout and not (tmp_path / "bad").exists()


def test_dry_run_prints_the_plan(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "dry", "--dry-run"), timeout=120)
    assert result.returncode == 0
    assert "6 trials of Optuna TPE" in result.stdout and "ASHA         up to 3 epochs" in result.stdout
    assert "nothing was started" in result.stdout and not (tmp_path / "dry").exists()


def _finished_trials(run_dir):
    done = []
    for result_file in run_dir.glob("train_car_classifier_*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if any(row.get("epoch") == 2 for row in rows):
            done.append(result_file.parent.name)
    return done


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_search_resumes_without_rerunning_finished_trials(tiny_cars, tmp_path, stop):
    command = search_command(tiny_cars, tmp_path, "resume", "--num-samples", "4", "--max-concurrent", "1",
                             "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=2", "--no-retrain")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "resume"
    deadline = time.monotonic() + 300
    while len(_finished_trials(run_dir)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    finished_before = set(_finished_trials(run_dir))
    assert len(finished_before) >= 2, "the search did not get far enough to interrupt"
    dataset_before = (run_dir / "dataset.parquet").read_bytes()
    interrupted_at = time.time()
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0
    if stop == signal.SIGINT:  # a graceful stop says how to continue
        assert "--resume" in stderr.strip().splitlines()[-1]

    result = run(command + ["--resume"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run_dir / "dataset.parquet").read_bytes() == dataset_before  # reused, not rewritten
    assert not list(run_dir.rglob(".partial-*"))
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials["trial_id"].nunique() == 4
    assert trials.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()  # no epoch run twice
    for name in finished_before:
        rows = trials[trials["trial_path"].str.endswith(name)]
        assert len(rows) == 2 and (rows["timestamp"] <= interrupted_at).all()  # kept, not re-run


def test_dashboard_on_another_host_warns(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "dash", "--dashboard-host", "0.0.0.0", "--dry-run"), timeout=120)
    assert result.returncode == 0
    assert "dashboard will listen on 0.0.0.0: it has no authentication" in result.stderr
