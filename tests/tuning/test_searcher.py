"""The Optuna study of a run: created once, reopened by the same experiment, refused to another, named when damaged."""

from __future__ import annotations

import pytest

from tuning.experiment import DEMO_EXPERIMENT, load_experiment
from tuning.searcher import STUDY_NAME, StudyError, StudyMismatchError, open_study, relocate_study, study_trials


def test_a_study_of_another_experiment_is_refused_naming_both(tmp_path):
    demo = load_experiment(DEMO_EXPERIMENT).to_dict()
    study = open_study(tmp_path, demo, "max")
    assert study.study_name == STUDY_NAME and (tmp_path / "study.db").is_file()
    assert open_study(tmp_path, demo, "max").user_attrs == study.user_attrs  # the same experiment reopens it
    other = load_experiment(DEMO_EXPERIMENT, ["search.num_samples=9"]).to_dict()
    other["source"] = "experiments/other.toml"
    with pytest.raises(StudyMismatchError, match=r"study\.db: this study belongs to another experiment \(.*demo\.toml.*\), "
                                                 r"not to experiments/other\.toml"):
        open_study(tmp_path, other, "max")


@pytest.mark.parametrize("content", [b"not a database\n" * 64, b"SQLite format 3\0" + bytes(200)])
def test_a_damaged_study_is_named_with_what_to_do(tmp_path, content):
    (tmp_path / "study.db").write_bytes(content)
    demo = load_experiment(DEMO_EXPERIMENT).to_dict()
    expected = rf"{tmp_path}/study\.db: damaged, or not an Optuna study \(.*\); restore it from a backup .* another --name"
    for use in (lambda: open_study(tmp_path, demo, "max"), lambda: relocate_study(tmp_path), lambda: study_trials(tmp_path)):
        with pytest.raises(StudyError, match=expected):
            use()


def test_trials_of_a_study_are_counted(tmp_path):
    assert study_trials(tmp_path) == 0 and not (tmp_path / "study.db").exists()
    study = open_study(tmp_path, load_experiment(DEMO_EXPERIMENT).to_dict(), "max")
    assert study_trials(tmp_path) == 0
    study.ask()
    assert study_trials(tmp_path) == 1
