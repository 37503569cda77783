"""`python -m tuning.search` end to end: Ray, Optuna on its own study, ASHA, retraining, resume, refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import optuna
import pandas as pd
import pytest

from carclf.runtime import module_installed
from tests.tuning.helpers import START_POINT, e2e_flags, must_stop_one, run, saved_trials, search_command
from tuning.report import write_report
from tuning.samplers import choose_sampler, gp_available
from tuning.study_storage import sqlite_url
from tuning.trials import Selection, start_trial_id, trial_summaries

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.slow
def test_search_runs_trials_stops_some_early_and_saves_the_best_model(finished_run):
    run_dir, result = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    per_trial = trials.groupby("trial_id").agg(epochs=("epoch", "max"), status=("status", "first"))
    assert len(per_trial) == 6  # Ray ran every trial
    rungs = (run_dir / "rungs.jsonl").read_text()  # the scores ASHA judged, shown where it stopped none (must_stop_one)
    assert (per_trial["status"] == "stopped early").any() and (per_trial["epochs"] < 3).any(), rungs  # ASHA stopped some
    assert (per_trial["status"] == "finished").any() and (per_trial["epochs"] == 3).any()
    assert (trials["images_seen"] == trials["epoch"] * 32).all()  # the same images per epoch at batch 8 and 16
    configs = trials.groupby("trial_id")[["config/learning_rate", "config/lr_decay"]].first()
    # Sampled by Optuna, not a grid: every trial's values are its study trial's. The GP sampler may propose a bound of
    # the space more than once (seen on JAX: learning rate 0.05 three times), so the values need not all differ.
    study = optuna.load_study(study_name="carclf", storage=f"sqlite:///{run_dir / 'study.db'}")
    sampled = sorted(round(trial.params["learning_rate"], 12) for trial in study.trials)
    assert sampled == sorted(round(value, 12) for value in configs["config/learning_rate"])
    assert configs["config/learning_rate"].nunique() >= 3
    assert configs["config/learning_rate"].between(1e-7, 0.05).all()

    model = keras.models.load_model(run_dir / "best" / "model.keras", safe_mode=True)
    labels = json.loads((run_dir / "best" / "labels.json").read_text())["class_names"]
    assert model.output_shape == (None, len(labels)) == (None, 4)
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    assert metrics["test"]["labeled"] and metrics["test"]["count"] == 12
    assert 0 <= metrics["test"]["accuracy"] <= 1 and len(metrics["test"]["confusion_matrix"]) == 4
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert set(config["hyperparameters"]) == {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth", "head_epochs"}
    assert "Ray dashboard: http://127.0.0.1:" in result.stdout
    assert "top 5 of 6 trials by val_loss at each trial's best epoch (8 validation images)" in result.stdout
    assert "test accuracy" in result.stdout and "head-only epochs" in result.stdout  # cached features were built
    assert (run_dir / "dataset.parquet").is_file() and (run_dir / "report.json").is_file()
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "finished"
    saved = json.loads((run_dir / "experiment.json").read_text())  # what the trials ran with, and what that was resolved from
    assert saved["train"]["epoch_images"] == 32 and saved["requested"] == {"train.epoch_images": 0}
    probe = json.loads((run_dir / "transfer.json").read_text())  # the pretrained backbone was probed once, before the trials
    assert probe["validation_size"] == 8 and probe["verdict"] in ("better", "within noise", "not better")
    assert "linear probe on frozen features, 8 validation images" in result.stdout
    # Warm workers: 6 trials on 2 CPUs ran in fewer processes than trials, and the search says where its time went.
    assert trials["worker_trials"].max() > 1
    assert trials[["setup_seconds", "train_seconds", "eval_seconds", "compile_seconds"]].notna().all().all()
    useful = json.loads((run_dir / "search.json").read_text())["useful_fraction"]
    assert 0 < useful < 1 and json.loads((run_dir / "report.json").read_text())["search"]["useful_fraction"] == useful
    # The console: one line per trial event (tuning.console), not Ray's configuration and result tables.
    for trial_id, row in per_trial.iterrows():
        assert f"trial {trial_id} started: batch_size=" in result.stdout
        ended = "stopped early" if row["status"] == "stopped early" else "finished"
        assert f"trial {trial_id} {ended} after {row['epochs']} epoch(s): best val_loss " in result.stdout
    stops = [line for line in result.stdout.splitlines() if line.endswith(": stopped") and " rung " in line]
    assert len(stops) == (per_trial["status"] == "stopped early").sum()
    assert "Trial status:" not in result.stdout and "time_this_iter_s" not in result.stdout
    assert "driver_artifacts" not in result.stdout and f"tensorboard --logdir {run_dir}" in result.stdout  # the run folder
    assert "A new study created in" not in result.stdout + result.stderr  # the searcher's scratch studies, the exported study


@pytest.mark.slow
@pytest.mark.viz
def test_tensorboard_reads_every_trials_curves_from_the_run_folder(finished_run):
    if not module_installed("tensorboard"):
        pytest.skip("TensorBoard: pip install -e \".[viz]\" (.ci/run's extras lane installs it)")
    run_dir, _ = finished_run
    inspected = subprocess.run([sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir", str(run_dir)],
                               capture_output=True, text=True, timeout=300)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    folders = inspected.stdout.split("Found event files in:")[1].split("These tags")[0].split()
    assert len(folders) == 6 and all(Path(folder).parent == run_dir / "ray" for folder in folders)  # found from the run
    assert "ray/tune/val_loss" in inspected.stdout and "ray/tune/best_val_loss" in inspected.stdout


@pytest.mark.slow
def test_two_phase_trials_are_judged_only_after_their_warm_up(finished_run):
    run_dir, _ = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    decisions = [json.loads(line) for line in (run_dir / "rungs.jsonl").read_text().splitlines()]
    assert decisions and {d["decision"] for d in decisions} <= {"continued", "spared", "stopped"}
    head_epochs = trials.groupby("trial_id")["config/head_epochs"].first()
    depth = trials.groupby("trial_id")["config/unfreeze_depth"].first()
    for decision in decisions:
        warm_up = head_epochs[decision["trial_id"]] if depth[decision["trial_id"]] > 0 else 0
        assert decision["epoch"] > warm_up
    stopped = {d["trial_id"] for d in decisions if d["decision"] == "stopped"}
    last = trials.sort_values("epoch").groupby("trial_id").last()
    assert stopped == set(last.index[last["status"] == "stopped early"])
    assert (last.loc[list(stopped), "final_phase_epochs"] >= 1).all()


@pytest.mark.slow
def test_one_rule_ranks_trials_teaches_optuna_and_sets_the_delivered_epochs(finished_run):
    run_dir, _ = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    last = trials.sort_values("epoch").groupby("trial_id").last()
    for trial_id, rows in trials.groupby("trial_id"):
        best_row = rows.loc[rows["val_loss"].idxmin()]
        assert last.loc[trial_id, "best_val_loss"] == pytest.approx(best_row["val_loss"])
        assert last.loc[trial_id, "best_epoch"] == best_row["epoch"]
    winner = last.sort_values("best_val_loss").iloc[0]
    config = json.loads((run_dir / "best" / "config.json").read_text())["hyperparameters"]
    assert config["learning_rate"] == pytest.approx(winner["config/learning_rate"])
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    assert metrics["retrain_epochs"] == winner["best_epoch"] and metrics["trial"]["trial_id"] == winner.name
    # The winner finished, so its final checkpoint holds its best epoch: the retraining was checked against it.
    assert metrics["reproduction"]["verdict"] in ("reproduced", "departed") and metrics["reproduction"]["images"] == 32
    assert metrics["delivered"] == ("retrained" if metrics["reproduction"]["verdict"] == "reproduced" else "trial")
    # The first start point's trial, unless it won, was delivered the same way and tested beside the winner.
    start = json.loads((run_dir / "experiment.json").read_text())["search"]["start"]
    start_id = start_trial_id(trial_summaries(trials, Selection("val_loss", "min")), start)
    assert ("start" in metrics) == (start_id != winner.name)
    if "start" in metrics:
        assert metrics["start"]["trial"]["trial_id"] == start_id and metrics["start"]["delivered"] in ("retrained", "trial")

    study = optuna.load_study(study_name="carclf", storage=f"sqlite:///{run_dir / 'study.db'}")
    states = [trial.state for trial in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.PRUNED in states  # ASHA's stops reach the study as PRUNED
    stopped = (last["status"] == "stopped early").sum()
    assert states.count(optuna.trial.TrialState.PRUNED) == stopped
    values = sorted(trial.value for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE)
    assert values == pytest.approx(sorted(last.loc[last["status"] == "finished", "best_val_loss"]))
    pruned = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED]
    assert all(trial.intermediate_values for trial in pruned)


@pytest.mark.slow
def test_start_point_is_evaluated_first(finished_run):
    run_dir, _ = finished_run
    trials = pd.read_parquet(run_dir / "trials.parquet").groupby("trial_id").first()
    first = trials[trials["trial_path"].str.contains(r"_1_batch_size=")].iloc[0]
    start = {"config/batch_size": 8, "config/learning_rate": 0.001, "config/lr_decay": 0.0001, "config/unfreeze_depth": 0,
             "config/head_epochs": 0}
    assert {key: first[key] for key in start} == pytest.approx(start)


@pytest.mark.slow
def test_existing_run_needs_resume(finished_run, tiny_cars):
    run_dir, _ = finished_run
    result = run(search_command(tiny_cars, run_dir.parent, run_dir.name, "--no-retrain"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir}: a run with this name exists; pass --resume")


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(finished_run, tiny_cars, synthetic_backbone):
    run_dir, _ = finished_run
    watched = [run_dir / "best" / "model.keras", run_dir / "report.html", run_dir / "best" / "metrics.json"]
    before = [path.stat().st_mtime_ns for path in watched]
    command = search_command(tiny_cars, run_dir.parent, run_dir.name, *e2e_flags(), weights=str(synthetic_backbone))
    result = run([*command, "--resume"], timeout=120)
    assert result.returncode == 0 and "this run is finished; nothing to do" in result.stdout
    assert [path.stat().st_mtime_ns for path in watched] == before


@pytest.mark.slow
def test_resume_refuses_a_flag_that_would_change_the_run(finished_run, tiny_cars):
    run_dir, _ = finished_run
    result = run([sys.executable, "-m", "tuning.search", "--resume", str(run_dir), "--num-samples", "9"], timeout=120)
    assert result.returncode == 2
    assert "error: --num-samples 9: --resume continues e2e as it was saved" in result.stderr


@pytest.mark.slow
def test_missing_gpu_stops_at_once_naming_the_key(tiny_cars, tmp_path):
    started = time.monotonic()
    result = run(search_command(tiny_cars, tmp_path, "gpu", "--gpus-per-trial", "0.5"), timeout=180)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "resources.gpus_per_trial is 0.5 but no node of this Ray cluster has any GPU" in last and "--gpus-per-trial 0" in last
    assert time.monotonic() - started < 120
    # The advice, followed: the name is not taken. (Too many CPUs asked for, so no trial runs here either.)
    again = run(search_command(tiny_cars, tmp_path, "gpu", "--gpus-per-trial", "0", "--cpus-per-trial", "64"), timeout=180)
    assert again.returncode == 2 and "a run with this name exists" not in again.stderr
    assert "--num-cpus 2 cannot host one trial of resources.cpus_per_trial 64" in again.stderr.strip().splitlines()[-1]


def test_invalid_experiment_never_starts_ray(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "bad", "--set", "train.learning_rate=-0.1"), timeout=120)
    assert result.returncode == 2
    assert "demo.toml [train]: key learning_rate must be > 0" in result.stderr.strip().splitlines()[-1]
    assert "Ray dashboard" not in result.stdout and not (tmp_path / "bad").exists()


def test_dry_run_checks_the_data_and_prints_the_plan(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "dry", "--dry-run"), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    sampler, why = choose_sampler("auto", 6)
    assert f"6 trials of Optuna {sampler.upper()} (2 random start-up trials; {why})" in result.stdout
    assert ("ASHA         up to 3 epochs; rungs at [1, 2] epochs of a trial's final phase (after up to 2 head-only warm-up "
            "epochs), keeping the top 1/2") in result.stdout
    assert "dataset: 52 images, 4 classes" in result.stdout and "32 training images each" in result.stdout
    assert "warning: the validation split has only 8 images" in result.stdout
    assert "nothing was started" in result.stdout and not (tmp_path / "dry").exists()


def _wait_for(run_dir, finished, process, seconds=300, created=0):
    """Until Ray's saved state holds `finished` finished trials and `created` trials in all."""
    deadline = time.monotonic() + seconds
    while ((len(saved_trials(run_dir / "ray")) < finished or len(saved_trials(run_dir / "ray", None)) < created)
           and time.monotonic() < deadline and process.poll() is None):
        time.sleep(0.5)
    assert len(saved_trials(run_dir / "ray")) >= finished, "the search did not get far enough to interrupt"


@pytest.mark.slow
def test_an_interrupted_search_resumes_where_it_is_now_without_rerunning_finished_trials(tiny_cars, tmp_path):
    """Ctrl+C, then a SIGKILL of the resumed run, then the folder moved: one run, each trial's epochs once."""
    command = search_command(tiny_cars, tmp_path, "resume", "--num-samples", "3", "--max-concurrent", "1",
                             "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=2", "--no-retrain",
                             "--set", "search.space.head_epochs={ choice = [0, 1] }",
                             cache=tmp_path / "cache")
    run_dir = tmp_path / "resume"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir, 1, process)
    second = run(command, timeout=120)  # the run has one owner
    assert second.returncode == 2 and f"{run_dir}: in use by pid {process.pid}" in second.stderr
    dataset_before = (run_dir / "dataset.parquet").read_bytes()
    written = (run_dir / "experiment.json").stat().st_mtime_ns  # written once, when the run started
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0 and "--resume" in stderr.strip().splitlines()[-1]  # a graceful stop says how to go on

    process = subprocess.Popen([*command, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Every trial created before the kill: Ray writes trials created after a resume where the run first was
    # (tuning.resume.check_not_moved), which is refused for a moved folder, so this move has none still to create.
    _wait_for(run_dir, 2, process, created=3)
    finished_before = set(saved_trials(run_dir / "ray"))
    interrupted_at = time.time()
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=180)

    moved = tmp_path / "elsewhere" / "resume"
    moved.parent.mkdir()
    shutil.move(run_dir, moved)
    result = run([*command, "--resume", str(moved)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not run_dir.exists()  # resumed where the folder is now
    assert (moved / "dataset.parquet").read_bytes() == dataset_before  # reused, not rewritten
    # Ray copies the .json files beside its experiment state down when it restores and back up at each snapshot; carclf's
    # own files are not beside it, so no copy of Ray's overwrites them (a kill during one would leave them empty).
    assert (moved / "experiment.json").stat().st_mtime_ns == written
    assert not list(moved.rglob(".partial-*"))
    trials = pd.read_parquet(moved / "trials.parquet")
    assert trials["trial_id"].nunique() == 3
    assert trials.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()  # no epoch run twice
    for name in finished_before:
        rows = trials[trials["trial_path"].str.endswith(name)]
        assert len(rows) == 2 and (rows["timestamp"] <= interrupted_at).all()  # kept, not re-run
    study = optuna.load_study(study_name="carclf", storage=f"sqlite:///{moved / 'study.db'}")
    states = [trial.state for trial in study.trials]
    assert len(states) - states.count(optuna.trial.TrialState.FAIL) == 3  # one study, continued
    assert optuna.trial.TrialState.RUNNING not in states  # a trial asked for just before a kill is closed


@pytest.mark.slow
def test_a_search_keeps_its_study_in_the_users_journal_and_resumes_from_it(tiny_cars, tmp_path):
    """`search.storage` as a journal file outside the run folder: a search interrupted after its first trial writes its
    study there, --resume checks it and finishes, and the journal then holds one study, named after the run, with each
    trial once; the run folder has no study.db, and the console says how to see the study."""
    journal = tmp_path / "studies" / "carclf.log"
    journal.parent.mkdir()
    command = search_command(tiny_cars, tmp_path, "journal", "--num-samples", "2", "--max-concurrent", "1", "--no-retrain",
                             "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=2",
                             "--set", "search.space.head_epochs={ choice = [0, 1] }", "--set", f"search.storage='{journal}'",
                             cache=tmp_path / "cache")
    run_dir = tmp_path / "journal"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=180)
    assert process.returncode != 0

    def study() -> optuna.Study:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        assert [summary.study_name for summary in optuna.get_all_study_summaries(storage)] == ["journal"]
        return optuna.load_study(study_name="journal", storage=storage)

    assert len(study().trials) >= 1  # written when the search was interrupted
    result = run([*command, "--resume"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = [trial.state for trial in study().trials]
    assert len(states) - states.count(optuna.trial.TrialState.FAIL) == 2 and optuna.trial.TrialState.RUNNING not in states
    assert not (run_dir / "study.db").exists()
    assert f"the study 'journal' is written; to see it: optuna-dashboard {journal}" in result.stderr


@pytest.mark.slow
def test_diverging_trials_are_marked_and_the_search_goes_on(tiny_cars, tmp_path):
    """Run from tmp_path with a relative storage path and cache folder, which trials (in Ray's workers, whose working
    folder is elsewhere) find as the command meant them, and a run name that is no plain word in a URL."""
    command = search_command(tiny_cars, Path("runs"), "nan?x=1", "--num-samples", "2", "--max-concurrent", "1", "--no-retrain",
                             "--set", "scheduler.max_epochs=1", "--set", "scheduler.kind='none'",
                             "--set", "search.space={ learning_rate = { choice = [1000000.0, 0.001] } }",
                             "--set", "search.start=[{ learning_rate = 1000000.0 }]", "--set", "train.unfreeze_depth=1",
                             "--set", "train.lr_decay=0.0", cache=Path("relcache"))
    result = run(command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "nan?x=1"
    assert f"cache        {tmp_path / 'relcache'}" in result.stdout and (tmp_path / "relcache" / "decoded").is_dir()
    trials = pd.read_parquet(run_dir / "trials.parquet").groupby("trial_id").last()
    assert sorted(trials["status"]) == ["diverged", "finished"]
    assert f"trial {trials.index[trials['status'] == 'diverged'][0]} diverged at epoch 1" in result.stdout
    diverged = trials[trials["status"] == "diverged"].iloc[0]
    assert diverged["config/learning_rate"] == 1e6 and diverged["best_val_loss"] == float("inf")
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["nan?x=1"]  # the study is in the run folder, not beside it
    study = optuna.load_study(study_name="carclf", storage=sqlite_url(run_dir / "study.db"))
    assert sorted(trial.value for trial in study.trials)[-1] == float("inf")  # val_loss: the worst value
    report = json.loads(write_report(run_dir)[0].read_text())
    assert report["search"]["diverged"] == 1 and report["top_trials"][-1]["status"] == "diverged"


@pytest.mark.slow
def test_a_single_point_search_runs_says_so_and_repeats_exactly(tiny_cars, tmp_path):
    """Nothing to choose, and seeded and deterministic on the CPU: two runs, the same trial and test metrics."""
    outcomes = []
    for name in ("first", "second"):
        command = search_command(tiny_cars, tmp_path, name, "--num-samples", "1", "--set", "scheduler.max_epochs=1",
                                 "--set", "search.space={ batch_size = { choice = [8] } }", "--set", "search.start=[]",
                                 "--set", "train.unfreeze_depth=1", cache=tmp_path / "cache")
        result = run(command)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "the search has nothing to choose" in result.stderr and "the search space has a single point" in result.stdout
        assert "the search will be random" in result.stderr  # 1 trial, 2 start-up trials
        trials = pd.read_parquet(tmp_path / name / "trials.parquet")
        metrics = json.loads((tmp_path / name / "best" / "metrics.json").read_text())["test"]
        outcomes.append((trials[["epoch", "loss", "val_loss", "val_accuracy"]].to_numpy().tolist(),
                         {key: metrics[key] for key in ("accuracy", "loss", "macro_f1")}))
    assert outcomes[0] == outcomes[1]


def test_dashboard_on_another_host_warns(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, tmp_path, "dash", "--dashboard-host", "0.0.0.0", "--dry-run"), timeout=120)
    assert result.returncode == 0
    assert "dashboard will listen on 0.0.0.0: anyone who reaches it with the cluster's token" in result.stderr


def test_resuming_a_folder_without_a_run_is_refused(tmp_path):
    result = run([*search_command(tmp_path, tmp_path, "none"), "--resume"], timeout=120)
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    assert not os.path.exists(tmp_path / "none" / "status.json")


def test_a_folder_that_cannot_be_written_is_named(tiny_cars, tmp_path):
    result = run(search_command(tiny_cars, Path("/proc/carclf-runs"), "ro", cache=tmp_path / "cache"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: /proc/carclf-runs" in result.stderr.strip().splitlines()[-1]


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB file system of its own (tmpfs), where the machine allows mounting one."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_named_before_anything_is_half_written(tiny_cars, tmp_path, small_disk):
    command = search_command(tiny_cars, small_disk, "full", "--num-samples", "1", "--no-retrain", "--set", "scheduler.max_epochs=1",
                             "--set", "search.space.head_epochs={ choice = [0] }",
                             cache=tmp_path / "cache")
    result = run(command, timeout=180)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"error: {small_disk / 'full'}: No space left" in last and "MB free" in last
    assert not (small_disk / "full" / "experiment.json").exists()
    subprocess.run(["mount", "-o", "remount,size=1g", str(small_disk)], check=True)  # the user frees space
    again = run(command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (small_disk / "full" / "trials.parquet").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["tpe", pytest.param("gp", marks=pytest.mark.gp), "random"])
def test_each_sampler_searches_stores_pruned_trials_and_resumes(algorithm, tiny_cars, synthetic_backbone, session_cache, tmp_path):
    """A tiny search per sampler, interrupted after its first trial and resumed: one study, ASHA's stops PRUNED. From the
    synthetic pretrained backbone, where the first start point's head learns in its first epoch, so the second, which
    cannot learn, is stopped (`must_stop_one`)."""
    if algorithm == "gp" and not gp_available():
        pytest.skip("Optuna's GPSampler needs PyTorch: pip install -e \".[gp]\" (CI installs it)")
    command = search_command(tiny_cars, tmp_path, algorithm, "--num-samples", "5", "--max-concurrent", "1", "--no-retrain",
                             "--set", f"search.algorithm='{algorithm}'", "--set", "scheduler.max_epochs=2",
                             "--set", "search.space.head_epochs={ choice = [0, 1] }", *must_stop_one(START_POINT),
                             weights=str(synthetic_backbone), cache=session_cache)
    run_dir = tmp_path / algorithm
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=180)
    result = run([*command, "--resume"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run_dir / "search.json").read_text())["sampler"] == algorithm
    trials = pd.read_parquet(run_dir / "trials.parquet")
    last = trials.sort_values("epoch").groupby("trial_id").last()
    assert len(last) == 5 and set(last["status"]) <= {"finished", "stopped early"}
    assert trials.groupby("trial_id")["epoch"].apply(lambda e: sorted(e) == list(range(1, len(e) + 1))).all()  # no epoch twice
    study = optuna.load_study(study_name="carclf", storage=f"sqlite:///{run_dir / 'study.db'}")
    states = [t.state for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(states) == 5 and optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.PRUNED) == (last["status"] == "stopped early").sum() >= 1, \
        (run_dir / "rungs.jsonl").read_text()  # the scores ASHA judged (must_stop_one)
    params = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(params)) == len(params)  # no proposal twice
    for decision in (json.loads(line) for line in (run_dir / "rungs.jsonl").read_text().splitlines()):
        row = trials[(trials["trial_id"] == decision["trial_id"]) & (trials["epoch"] == decision["epoch"])].iloc[0]
        assert row["final_phase_epochs"] >= 1 and row["phase"] == last.loc[decision["trial_id"], "phase"]  # never in a warm-up


def test_the_demo_runs_again_under_a_new_name_once_finished(tmp_path, caplog):
    """README's first line, run again: a finished demo run is kept and the new one is demo-2, then demo-3.
    An interrupted demo keeps its name (for --resume), and a chosen --name or --experiment is never changed."""
    from tuning.resume import resolve_experiment
    from tuning.run_folder import RunFolder
    from tuning.search import parse_args

    def run_dir(*flags: str) -> Path:
        return resolve_experiment(parse_args(["--storage-path", str(tmp_path), *flags])).run_dir

    def reach(name: str, stage: str) -> None:
        (tmp_path / name).mkdir(exist_ok=True)
        RunFolder(tmp_path / name).mark(stage)

    assert run_dir() == tmp_path / "demo"
    reach("demo", "finished")
    with caplog.at_level("INFO", logger="tuning.search"):
        assert run_dir() == tmp_path / "demo-2"
    assert f"{tmp_path / 'demo'} is a finished demo run, kept as it is; this run is {tmp_path / 'demo-2'}" in caplog.text
    reach("demo-2", "finished")
    assert run_dir("--set", "train.momentum=0.8") == tmp_path / "demo-3"
    assert run_dir("--name", "demo") == run_dir("--experiment", "demo") == tmp_path / "demo"
    reach("demo", "searched")
    assert run_dir() == tmp_path / "demo"
