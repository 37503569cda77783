"""carclf's searcher driven directly, without a Tuner: what the study records, its saved state, its export.

Ray calls `suggest`, `on_trial_result`, `on_trial_complete`, `save` and `restore`; these tests call them
the same way, so the most version-fragile part of a search is covered in seconds.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil

import optuna
import pytest
from ray.tune.search import Searcher

from carclf.config import RunSettings
from tuning.samplers import gp_available
from tuning.search_space import parse_space
from tuning.search_state import RungLog, export_search_state, read_search_state
from tuning.searcher import StudySearcher
from tuning.stopped_trials import as_modelled, estimated_final
from tuning.study_storage import IDENTITY_ATTRIBUTE, STUDY_NAME, StudyError, StudyPlace, sqlite_url, study_identity

SPACE = parse_space({"batch_size": {"choice": [8, 16]}, "learning_rate": {"loguniform": [1e-3, 1e-1]},
                     "unfreeze_depth": {"randint": [0, 3]}}, RunSettings(), "exp.toml")
START = [{"batch_size": 8, "learning_rate": 0.005, "unfreeze_depth": 0}, {"batch_size": 16, "learning_rate": 0.02, "unfreeze_depth": 1}]
IDENTITY = {"fingerprint": "0123abcd", "source": "exp.toml", "run_id": "run-1"}
TrialState = optuna.trial.TrialState


def searcher(sampler="tpe", start=START, parallel=True, seed=0) -> StudySearcher:
    """A searcher as `tuning.tuner` makes one: maximizing best_val_accuracy over 3 epochs."""
    return StudySearcher(SPACE, metric="best_val_accuracy", mode="max", max_epochs=3, sampler=sampler, startup_trials=2,
                         parallel=parallel, seed=seed, start=start, identity=IDENTITY, rung_log=RungLog())


def train(search: StudySearcher, trial_id: str, scores: list[float], error: bool = False, diverged: bool = False) -> None:
    """A trial's epochs as Ray reports them: each result to on_trial_result but the last, which goes to on_trial_complete."""
    results = [{"epoch": epoch, "best_val_accuracy": max(scores[:epoch]), "diverged": False} for epoch in range(1, len(scores) + 1)]
    if diverged:
        results[-1].update(best_val_accuracy=-math.inf, diverged=True)
    for result in results[:-1]:
        search.on_trial_result(trial_id, result)
    search.on_trial_complete(trial_id, None if error else results[-1], error=error)


def test_start_points_come_first_then_proposals_from_the_space():
    search = searcher()
    proposed = [search.suggest(f"t{i}") for i in range(5)]
    assert proposed[:2] == START
    for point in proposed[2:]:
        assert point["batch_size"] in (8, 16) and 1e-3 <= point["learning_rate"] <= 1e-1 and point["unfreeze_depth"] in range(4)


def test_the_study_records_each_ending_with_its_values():
    """Finished and diverged: COMPLETE (the worst value for a divergence); stopped before max_epochs: PRUNED with the
    values it reported; an error: FAIL. A trial's value is its best epoch's, and each epoch's is kept."""
    search = searcher(sampler="random")
    for name in ("finished", "stopped", "diverged", "failed"):
        search.suggest(name)
    train(search, "finished", [0.5, 0.7, 0.6])
    train(search, "stopped", [0.3, 0.2])
    train(search, "diverged", [0.4, 0.1, 0.1], diverged=True)
    train(search, "failed", [0.5], error=True)
    trials = {trial.user_attrs["ray_trial_id"]: trial for trial in search.study.trials}
    assert trials["finished"].state == TrialState.COMPLETE and trials["finished"].value == 0.7
    assert trials["finished"].intermediate_values == {1: 0.5, 2: 0.7, 3: 0.7}
    assert trials["stopped"].state == TrialState.PRUNED and trials["stopped"].intermediate_values == {1: 0.3, 2: 0.3}
    assert trials["diverged"].state == TrialState.COMPLETE and trials["diverged"].value == -math.inf
    assert trials["failed"].state == TrialState.FAIL


def test_parallel_proposals_see_the_trials_still_running():
    """Eight proposals asked at once, none told yet: the study holds them as RUNNING, and TPE's constant liar spreads them."""
    search = searcher(start=[])
    proposed = [search.suggest(f"t{i}") for i in range(8)]
    assert [trial.state for trial in search.study.trials] == [TrialState.RUNNING] * 8
    assert len({tuple(sorted(point.items())) for point in proposed}) == 8


def test_a_restored_searcher_goes_on_with_the_same_study_from_a_state_that_names_no_place(tmp_path):
    """Saved with one trial finished, one stopped and one running, then restored elsewhere (a moved run folder), in a
    searcher unpickled as Ray keeps it in tuner.pkl: the numbers, values and the running trial are as they were, the
    running trial is told when it ends, and the next proposals repeat none of the earlier ones."""
    search = searcher(sampler="random", start=START[:1])
    fresh = pickle.dumps(search)  # tuner.pkl: pickled once, before the search
    for trial_id in ("a", "b", "c"):
        search.suggest(trial_id)
    train(search, "a", [0.5, 0.6, 0.7])
    train(search, "b", [0.2, 0.1])
    search.on_trial_result("c", {"epoch": 1, "best_val_accuracy": 0.4})
    search.save(str(tmp_path / "searcher-state-1.pkl"))
    before = [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in search.study.trials]
    assert "/" not in (tmp_path / "searcher-state-1.pkl").read_text().replace("\\/", "")  # no path: moves with its folder

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "searcher-state-1.pkl", moved / "searcher-state-1.pkl")
    restored = pickle.loads(fresh)
    restored.restore(str(moved / "searcher-state-1.pkl"))
    assert [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in restored.study.trials] == before
    restored.on_trial_result("c", {"epoch": 2, "best_val_accuracy": 0.8})  # Ray goes on from its checkpoint
    restored.on_trial_complete("c", {"epoch": 3, "best_val_accuracy": 0.9, "diverged": False})
    assert restored.study.trials[2].state == TrialState.COMPLETE and restored.study.trials[2].value == 0.9
    later = [restored.suggest(f"d{i}") for i in range(3)]
    earlier = [t.params for t in restored.study.trials[:3]]
    assert not any(point in earlier for point in later)  # the sampler was not seeded back to its first draws


def test_a_trial_asked_after_the_last_save_leaves_no_orphan(tmp_path):
    """Ray saves the searcher with its trials' states: a trial asked after the last save, then lost in a kill, is in
    neither, so the restored study holds no trial left running forever."""
    search = searcher(sampler="random", start=[])
    search.suggest("a")
    train(search, "a", [0.5, 0.6, 0.7])
    search.save(str(tmp_path / "state.json"))
    search.suggest("lost-in-a-kill")
    restored = searcher(sampler="random", start=[])
    restored.restore(str(tmp_path / "state.json"))
    assert [trial.state for trial in restored.study.trials] == [TrialState.COMPLETE]


def test_the_state_exports_to_the_study_optuna_dashboard_reads(tmp_path):
    """study.db and rungs.jsonl, written from the newest saved state in the run folder; the state is strict JSON."""
    search = searcher(sampler="random")
    for trial_id in ("a", "b"):
        search.suggest(trial_id)
    train(search, "a", [0.5, 0.6, 0.7])
    train(search, "b", [0.4, 0.3], diverged=True)
    search.rung_log.append({"run_id": "run-1", "trial_id": "b", "rung": 1, "epoch": 1, "score": 0.4, "cut": 0.5, "decision": "stopped"})
    search.save(str(tmp_path / "searcher-state-2026-01-01_00-00-00.pkl"))
    searcher(sampler="random").save(str(tmp_path / "searcher-state-2025-01-01_00-00-00.pkl"))  # an older session's, empty
    json.loads((tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").read_text(), parse_constant=pytest.fail)

    state = read_search_state(tmp_path)
    export_search_state(StudyPlace(tmp_path), state, SPACE.optuna_distributions())
    study = optuna.load_study(study_name=STUDY_NAME, storage=sqlite_url(tmp_path / "study.db"))
    assert study.user_attrs[IDENTITY_ATTRIBUTE] == IDENTITY == study_identity(StudyPlace(tmp_path), "run-1")
    assert [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.trials] == [
        (t.number, t.state, t.params, t.value, t.intermediate_values) for t in search.study.trials]
    assert [json.loads(line)["trial_id"] for line in (tmp_path / "rungs.jsonl").read_text().splitlines()] == ["b"]


@pytest.mark.parametrize("content", [b"not a database\n" * 64, b"SQLite format 3\0" + bytes(200)])
def test_a_damaged_study_is_named_with_what_to_do(tmp_path, content):
    (tmp_path / "study.db").write_bytes(content)
    with pytest.raises(StudyError, match=rf"{tmp_path}/study\.db: damaged, or not an Optuna study \(.*\); restore it from a copy"):
        study_identity(StudyPlace(tmp_path), "run-1")


def trained_state(run_id: str) -> dict:
    """The saved state of a search whose two trials ran (one finished, one diverged), as run `run_id`."""
    search = searcher(sampler="random")
    search.identity["run_id"] = run_id
    for trial_id in ("a", "b"):
        search.suggest(trial_id)
    train(search, "a", [0.5, 0.6, 0.7])
    train(search, "b", [0.4, 0.3], diverged=True)
    return search.saved_state()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_study_goes_to_the_users_own_storage_and_is_found_by_its_run(tmp_path, kind):
    """`search.storage` as a second SQLite file's URL and as a journal file, each shared by two runs named alike: each
    run's study is there under the run's name (the second, whose name is taken, as NAME-RUNID), readable with Optuna's
    own storages, found again by its run id, and replaced, not doubled, when a resumed search writes it again. The run
    folders get no study.db."""
    setting = sqlite_url(tmp_path / "studies.db") if kind == "sqlite" else str(tmp_path / "studies.log")
    storage = setting if kind == "sqlite" else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(setting))
    first, second = StudyPlace(tmp_path / "a" / "demo", setting), StudyPlace(tmp_path / "b" / "demo", setting)
    for place in (first, second):
        place.run_dir.mkdir(parents=True)
    state = trained_state("run-1")
    assert study_identity(first, "run-1") is None
    assert export_search_state(first, state, SPACE.optuna_distributions()) == "demo"
    assert export_search_state(second, trained_state("run-2"), SPACE.optuna_distributions()) == "demo-run-2"
    assert export_search_state(first, state, SPACE.optuna_distributions()) == "demo"  # a resumed search writes it again

    assert sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage)) == ["demo", "demo-run-2"]
    study = optuna.load_study(study_name="demo", storage=storage)
    assert [(t.state, t.params, t.value) for t in study.trials] == [
        (TrialState.COMPLETE, saved["params"], saved["value"] if isinstance(saved["value"], float) else -math.inf)
        for saved in state["trials"]]
    assert study_identity(first, "run-1") == study.user_attrs[IDENTITY_ATTRIBUTE] == {**IDENTITY, "run_id": "run-1"}
    assert study_identity(second, "run-2")["run_id"] == "run-2" and study_identity(first, "run-3") is None
    assert not (first.run_dir / "study.db").exists() and (first.run_dir / "rungs.jsonl").is_file()


@pytest.mark.parametrize("setting, reason", [
    ("nosuchdialect://host/db", r"Can't load plugin: sqlalchemy\.dialects:nosuchdialect"),
    ("missing/studies.log", r"No such file or directory"),
])
def test_a_storage_that_cannot_be_used_is_named_without_its_password(tmp_path, setting, reason):
    setting = setting.replace("host", "user:secret@host") if "://" in setting else str(tmp_path / setting)
    with pytest.raises(StudyError, match=rf"search\.storage (\S+): cannot be used \({reason}.*\); check the URL") as raised:
        study_identity(StudyPlace(tmp_path / "demo", setting), "run-1")
    assert "secret" not in str(raised.value)


GRID = parse_space({"batch_size": {"choice": [8, 16]}, "unfreeze_depth": {"randint": [0, 3]}, "head_epochs": {"choice": [0, 1]}},
                   RunSettings(), "exp.toml")  # 16 points


@pytest.mark.parametrize("sampler", ["tpe", pytest.param("gp", marks=pytest.mark.gp)])
@pytest.mark.parametrize("parallel", [False, True])
def test_no_proposal_repeats_a_trial_after_stops_past_the_start_up(sampler, parallel):
    """Three trials finish (past the start-up); then every trial is stopped at its first rung (PRUNED), the case in which
    GP, which models COMPLETE trials only, proposed the same corner again and again. 16 trials in a space of 16 points:
    each is a different point, so the search covers the space."""
    if sampler == "gp" and not gp_available():
        pytest.skip("Optuna's GPSampler needs PyTorch: pip install -e \".[gp]\" (CI installs it)")
    search = StudySearcher(GRID, metric="best_val_accuracy", mode="max", max_epochs=3, sampler=sampler, startup_trials=2,
                           parallel=parallel, seed=0, start=[], identity=IDENTITY, rung_log=RungLog())
    for number in range(16):
        search.suggest(f"t{number}")
        train(search, f"t{number}", [0.6 + number / 100] * 3 if number < 3 else [0.1])
    points = [trial.params for trial in search.study.trials]
    assert len(points) == 16 and not any(GRID.repeats(a, b) for i, a in enumerate(points) for b in points[:i])


def test_a_float_range_with_no_point_left_ends_the_search_saying_so(caplog):
    """A learning rate alone in the space: values within 1 % of its range are one point, so at most 101 trials fit
    (drawn at random, about 75 before no gap is left). Asked for more, the search stops proposing, saying so, rather
    than repeat a trial."""
    space = parse_space({"learning_rate": {"uniform": [0.01, 0.02]}}, RunSettings(), "exp.toml")
    search = StudySearcher(space, metric="best_val_accuracy", mode="max", max_epochs=3, sampler="random", startup_trials=2,
                           parallel=False, seed=0, start=[], identity=IDENTITY, rung_log=RungLog())
    answers = []
    while len(answers) < 150 and Searcher.FINISHED not in answers:
        answers.append(search.suggest(f"t{len(answers)}"))
        if answers[-1] != Searcher.FINISHED:
            train(search, f"t{len(answers) - 1}", [0.5, 0.5, 0.5])
    rates = sorted(trial.params["learning_rate"] for trial in search.study.trials)
    assert answers[-1] == Searcher.FINISHED and 50 <= len(rates) <= 101, len(rates)
    assert min(b - a for a, b in zip(rates, rates[1:])) > 0.01 * 0.01  # no two within 1 % of the range
    assert f"the search ends after {len(rates)} trials" in caplog.text


LEARNING = parse_space({"learning_rate": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.8, 0.95]}}, RunSettings(), "exp.toml")


def stopped_at_large_rates(stopped_trials: str, seed: int, sampler: str = "gp") -> StudySearcher:
    """Three trials at small learning rates finish (0.4 at their first epoch, 0.7 at their third); four at large ones are
    stopped at their first rung with 0.15. Nothing else differs between the two settings of `search.stopped_trials`."""
    search = StudySearcher(LEARNING, metric="best_val_accuracy", mode="max", max_epochs=3, sampler=sampler, startup_trials=2,
                           parallel=False, seed=seed, start=[], identity=IDENTITY, rung_log=RungLog(), stopped_trials=stopped_trials)
    finished = [{"learning_rate": 0.002, "momentum": 0.85}, {"learning_rate": 0.004, "momentum": 0.88}, {"learning_rate": 0.003, "momentum": 0.86}]
    stopped = [{"learning_rate": r, "momentum": m} for r, m in ((0.05, 0.9), (0.07, 0.82), (0.09, 0.88), (0.04, 0.85))]
    for number, point in enumerate(finished + stopped):
        search.study.enqueue_trial(point)
        search.suggest(f"t{number}")
        train(search, f"t{number}", [0.4, 0.55, 0.7] if point in finished else [0.15])
    return search


@pytest.mark.gp
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stopped_trials_curve_moves_the_next_proposal_away_from_where_it_stopped(seed):
    """GP models COMPLETE trials only: told nothing of the four stopped trials, it proposes the largest learning rate,
    where they all did badly. Told their estimated final values (`search.stopped_trials = "estimate"`), it stays near
    the trials that finished, with the same seed."""
    if not gp_available():
        pytest.skip("Optuna's GPSampler needs PyTorch: pip install -e \".[gp]\" (CI installs it)")
    ignored = stopped_at_large_rates("sampler", seed).suggest("next")["learning_rate"]
    estimated = stopped_at_large_rates("estimate", seed).suggest("next")["learning_rate"]
    assert ignored >= 0.04 and estimated < 0.01, (ignored, estimated)


def test_a_stopped_trial_is_modelled_at_its_value_plus_the_finished_trials_median_gain_and_recorded_as_stopped():
    search = stopped_at_large_rates("estimate", 0, sampler="tpe")
    trials = search.study.get_trials(deepcopy=False)
    modelled = as_modelled(trials, "estimate")
    # every finished trial gained 0.7 - 0.4 after epoch 1, where the stopped ones stood at 0.15
    assert [trial.value for trial in modelled] == pytest.approx([0.7, 0.7, 0.7, 0.45, 0.45, 0.45, 0.45])
    assert {trial.state for trial in modelled} == {TrialState.COMPLETE}
    assert [trial.state for trial in trials].count(TrialState.PRUNED) == 4  # the study keeps the stops' record
    assert all(trial.intermediate_values == {1: 0.15} for trial in trials if trial.state == TrialState.PRUNED)
    assert as_modelled(trials, "sampler") == trials
    # stopped where no finished trial reported: the value so far, which the best epoch so far can only improve on
    lone = optuna.trial.create_trial(params={"learning_rate": 0.05, "momentum": 0.9}, distributions=LEARNING.optuna_distributions(),
                                     intermediate_values={5: 0.3}, state=TrialState.PRUNED)
    assert estimated_final(lone, [trial for trial in trials if trial.state == TrialState.COMPLETE]) == 0.3
