"""Which run a command means: the saved experiment, resolved, against what the user asked for."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.tuning.helpers import run
from tuning.experiment import DEMO_EXPERIMENT, experiment_from_document, load_experiment
from tuning.resume import as_requested, differences, resolved_values


def test_a_resolved_experiment_remembers_what_it_was_resolved_from(tmp_path):
    requested = load_experiment(DEMO_EXPERIMENT, [f"run.storage_path='{tmp_path}'"])
    weights = tmp_path / "backbone.weights.h5"
    settings = requested.settings.with_train(epoch_images=96)
    resolved = requested.with_settings(dataclasses.replace(settings, model=dataclasses.replace(settings.model, weights=str(weights))))

    resolved_from = resolved_values(resolved, requested)
    assert resolved_from == {"model.weights": requested.settings.model.weights, "train.epoch_images": 0}
    document = resolved.to_dict()
    given = experiment_from_document(as_requested(document, resolved_from), "experiment.json")
    assert given.to_dict() == requested.to_dict() and document["model"]["weights"] == str(weights)  # the document is not changed
    assert differences(given, requested) == set()
    assert differences(resolved, requested) == {"model.weights", "train.epoch_images"}


def copy_of_run(run_dir: Path, tmp_path: Path) -> Path:
    """The run folder copied elsewhere (without the trials' checkpoints, which nothing here reads)."""
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*"))
    return copy


def ray_files_beside_carclfs(run_dir: Path) -> None:
    """The layout of an earlier carclf: Ray's experiment folder was the run folder itself."""
    for item in (run_dir / "ray").iterdir():
        item.rename(run_dir / item.name)


def foreign_trial(run_dir: Path) -> None:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    trials.loc[trials.index[0], "trial_id"] = "elsewhere_00001"
    trials.to_parquet(run_dir / "trials.parquet")


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "expected"), [
    (lambda run_dir: [path.unlink() for path in run_dir.glob("ray/searcher-state-*.pkl")],
     r"copy/e2e/ray: Ray's trials are here but not the searcher's saved state \(searcher-state-\*\.pkl\), the study they belong to"),
    (foreign_trial, r"copy/e2e/trials\.parquet: holds trials this run did not run \(elsewhere_00001\): restore it from a copy"),
    (lambda run_dir: (run_dir / "experiment.json").write_text("{\"run_id\": "), r"copy/e2e/experiment\.json: damaged \("),
    (ray_files_beside_carclfs, r"copy/e2e: Ray's files are beside carclf's, as an earlier carclf kept them; this one keeps them in "
                               r"ray/: resume the run with the carclf that started it"),
], ids=["searcher-state-deleted", "trials-of-another-run", "experiment-json-truncated", "ray-files-beside-carclfs"])
def test_a_resume_refuses_a_folder_that_is_not_one_run_before_ray_starts(finished_run, tmp_path, damage, expected):
    """Each file a resume reads is named when it is missing, damaged or another run's; nothing is created in its place."""
    run_dir = copy_of_run(finished_run[0], tmp_path)
    damage(run_dir)
    result = run([sys.executable, "-m", "tuning.search", "--resume", str(run_dir)], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(expected, result.stderr.strip().splitlines()[-1]), result.stderr[-2000:]
    assert "Ray dashboard" not in result.stdout
    assert not list(run_dir.glob("ray/searcher-state-*")) or "searcher" not in expected  # nothing is made in its place


@pytest.mark.slow
def test_an_undamaged_copy_of_a_finished_run_resumes_as_finished(finished_run, tmp_path):
    """Elsewhere, and without its study.db: that is written from the searcher's saved state, which the copy holds."""
    run_dir = copy_of_run(finished_run[0], tmp_path)
    (run_dir / "study.db").unlink()
    result = run([sys.executable, "-m", "tuning.search", "--resume", str(run_dir)], timeout=120)
    assert result.returncode == 0 and "this run is finished; nothing to do" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_the_report_names_a_damaged_rung_log(finished_run, tmp_path):
    run_dir = copy_of_run(finished_run[0], tmp_path)
    with open(run_dir / "rungs.jsonl", "a") as handle:
        handle.write("{not json\n")
    lines = len((run_dir / "rungs.jsonl").read_text().splitlines())
    result = run([sys.executable, "-m", "tuning.report", str(run_dir)], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"rungs.jsonl: damaged (line {lines} is not one of ASHA's rung decisions: '{{not json')" in result.stderr


def test_a_moved_run_with_trials_still_to_create_is_refused_with_the_way_back(tmp_path):
    """Ray creates the trials still to come where the run was first stored: a moved run resumes only when none are left,
    or through a link at its first place (the folder as named, not where the link points)."""
    from tuning.resume import check_not_moved
    from tuning.run_folder import RunFolderError, SavedExperiment
    from tuning.run_storage import RunPlace

    first = tmp_path / "runs" / "demo"
    document = load_experiment(DEMO_EXPERIMENT, [f"run.storage_path='{first.parent}'"]).to_dict()  # 6 trials
    saved = SavedExperiment(document, {}, "0123456789ab")
    check_not_moved(RunPlace(first), saved, asked=2)  # where it started: fine
    check_not_moved(RunPlace(tmp_path / "elsewhere" / "demo"), saved, asked=6)  # moved, every trial created: fine
    with pytest.raises(RunFolderError, match=rf"elsewhere/demo: this run started at {first}, .* 4 trial\(s\) are still to come\. "
                                             rf"Put the folder back there, or make a link there to it \(ln -s \S+ {first}\), and "
                                             rf"resume it from there: --resume {first}"):
        check_not_moved(RunPlace(tmp_path / "elsewhere" / "demo"), saved, asked=2)
