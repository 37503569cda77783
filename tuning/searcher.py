"""Optuna inside Ray Tune, done so that the study learns what the trials really showed.

- Every trial reports `best_<metric>` (`tuning.trials.Selection`): Optuna learns each trial's
  best epoch, the value that ranks trials and picks the winner's epochs.
- A trial that ASHA stopped reaches the study as PRUNED with its per-epoch values (Ray's
  `OptunaSearch` calls it COMPLETE), so TPE knows it was cut short rather than finished.
- The sampler (TPE, GP or random, `tuning.samplers`) starts modelling after
  `search.startup_trials` random trials, scaled to the search's size by default.
- The study lives in `RUN_DIR/study.db` (Optuna's RDB storage on SQLite): `optuna-dashboard
  sqlite:///RUN_DIR/study.db` shows it, `--resume` continues it, and a run folder moved or
  copied elsewhere goes on there, with its own study (`relocate_study`). A study written for
  another experiment is refused.

Doing so reads private attributes of Ray's `OptunaSearch` (`_ot_study`, `_ot_trials`,
`_completed_trials`...) and of Optuna's storage, so pyproject.toml bounds Ray and Optuna to the
minor versions whose tests passed (tests/tuning/test_searcher.py and the whole searches).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from ray import cloudpickle
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from carclf.files import atomic_path
from tuning.run_folder import RunFolder
from tuning.samplers import make_sampler
from tuning.trials import Selection

STUDY_NAME = "carclf"
EXPERIMENT_ATTRIBUTE = "carclf_experiment"


class StudyError(RuntimeError):
    """`study.db` cannot be used: damaged, or written for another experiment."""


class StudyMismatchError(StudyError):
    """`study.db` belongs to another experiment."""


def study_url(run_dir: Path) -> str:
    """The SQLAlchemy URL of `RUN_DIR/study.db`, its path escaped: a run named `run?x=1` is a folder, not a query."""
    return sqlalchemy.engine.URL.create("sqlite", database=str(RunFolder(Path(run_dir)).study_file.resolve())).render_as_string()


@contextlib.contextmanager
def readable_study(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's and Optuna's errors on a damaged study file into a `StudyError` naming the file and
    what to do (a truncated copy, a disk error, another program's file under the name)."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        reason = str(error).splitlines()[0]
        raise StudyError(f"{sqlalchemy.engine.make_url(url).database}: damaged, or not an Optuna study ({reason}); restore it from a "
                         "backup to continue this run, or start a new run with another --name") from None


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on the SQLite file at `url`, or `StudyError` if the file is damaged."""
    with readable_study(url):
        return optuna.storages.RDBStorage(url)


def experiment_fingerprint(document: dict[str, Any]) -> str:
    """What makes trials of two runs comparable: the data, model, train, search and scheduler tables."""
    kept = {key: document[key] for key in ("data", "model", "train", "search", "scheduler")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_identity(run_dir: Path) -> dict[str, Any] | None:
    """What `RUN_DIR/study.db` says it was made for: the experiment's fingerprint and source, and the run's id
    (`open_study`); None without the file. A file that holds no carclf study is a `StudyError`."""
    if not RunFolder(Path(run_dir)).study_file.is_file():
        return None
    url = study_url(run_dir)
    storage = study_storage(url)
    with readable_study(url):
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        if STUDY_NAME not in names:
            raise StudyError(f"{RunFolder(Path(run_dir)).study_file}: holds no carclf study (it has {names or 'none'}); restore this "
                             "run's study.db from a copy of the run folder, or start a new run with another --name")
        return optuna.load_study(study_name=STUDY_NAME, storage=storage).user_attrs.get(EXPERIMENT_ATTRIBUTE, {})


def study_trials(run_dir: Path) -> int:
    """How many trials `RUN_DIR/study.db` holds (0 without the file)."""
    if not RunFolder(Path(run_dir)).study_file.is_file():
        return 0
    storage = study_storage(study_url(run_dir))
    with readable_study(storage.url):
        return sum(summary.n_trials for summary in optuna.get_all_study_summaries(storage))


def open_study(run_dir: Path, document: dict[str, Any], direction: str, run_id: str | None = None) -> optuna.Study:
    """Create `RUN_DIR/study.db`, or open it if it was written for this same experiment.

    A study of another experiment under the same run name is refused, naming both. The study records
    the experiment's fingerprint and the run's id (`study_identity`), which `--resume` checks.
    """
    storage = study_storage(study_url(run_dir))
    with readable_study(storage.url):
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                    direction="maximize" if direction == "max" else "minimize")
    fingerprint = experiment_fingerprint(document)
    saved = study.user_attrs.get(EXPERIMENT_ATTRIBUTE)
    if saved is None:
        study.set_user_attr(EXPERIMENT_ATTRIBUTE, {"fingerprint": fingerprint, "source": document["source"], "run_id": run_id})
    elif saved["fingerprint"] != fingerprint:
        raise StudyMismatchError(
            f"{RunFolder(Path(run_dir)).study_file}: this study belongs to another experiment ({saved['source']}, fingerprint "
            f"{saved['fingerprint']}), not to {document['source']} (fingerprint {fingerprint}); choose another --name"
        )
    return study


class PrunedAwareOptunaSearch(OptunaSearch):
    """`OptunaSearch` that tells the study which trials ASHA stopped (see the module docstring).

    Its saved state (Ray pickles the searcher into `tuner.pkl` and `searcher-state-*.pkl`) holds
    the study's name, not its storage: unpickled, it reopens `study.db` where the run folder is
    now (`relocate_study`), or where it was when there is no newer place.
    """

    relocated_study: str | None = None  # set by `relocate_study` before a run is restored

    def __init__(self, *, max_epochs: int, storage: optuna.storages.RDBStorage, **kwargs):
        super().__init__(storage=storage, **kwargs)
        self.max_epochs = max_epochs
        self._study_url = storage.url

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and result.get(self.metric) is not None:
            self._ot_trials[trial_id].report(result[self.metric], result["epoch"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result:  # Tune hands a trial's last result to this method only
            self.on_trial_result(trial_id, result)
        stopped_early = (not error and result is not None and not result.get("diverged")
                         and result.get("epoch", 0) < self.max_epochs)
        if not stopped_early or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None, "_ot_study": None, "_study_open": self._ot_study is not None,
                "_ot_trials": {trial_id: trial._trial_id for trial_id, trial in self._ot_trials.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage = study_storage(self.relocated_study or self._study_url)
        if state["_study_open"]:
            self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {trial_id: optuna.trial.Trial(self._ot_study, number) for trial_id, number in state["_ot_trials"].items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """The saved state, and the study cleaned of trials asked for after it was saved (the search was
        killed in between): left RUNNING, they would count as lies of the constant liar forever."""
        with open(checkpoint_path, "rb") as handle:
            self.__setstate__(pickle.load(handle))
        known = {trial._trial_id for trial in self._ot_trials.values()}
        for orphan in self._ot_study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
            if orphan._trial_id not in known:
                self._ot_study.tell(orphan.number, state=optuna.trial.TrialState.FAIL)


def relocate_study(run_dir: Path) -> None:
    """Make a restored search use `run_dir`, wherever the run folder was when it was saved.

    The searcher reopens `run_dir/study.db`. Ray restores the trial-creating side of a search
    (`search_gen_state-*.json`) with the storage location it was saved with, so trials created
    after the restore would be written to the old folder (or fail where it no longer exists):
    their location is rewritten to `run_dir` here, before Ray reads it.
    """
    study_storage(study_url(run_dir))  # a damaged study is named here, before Ray unpickles the searcher
    PrunedAwareOptunaSearch.relocated_study = study_url(run_dir)
    for path in run_dir.glob("search_gen_state-*.json"):
        with open(path, "rb") as handle:
            state = cloudpickle.load(handle)
        storage = state["experiment"].storage
        if Path(storage.storage_fs_path) / storage.experiment_dir_name == run_dir:
            continue
        moved = copy.copy(storage)  # as Ray moves restored trials: same staging folder, new place
        moved.storage_fs_path, moved.experiment_dir_name = str(run_dir.parent), run_dir.name
        state["experiment"].storage = state["experiment"].spec["storage"] = moved
        with atomic_path(path) as partial, open(partial, "wb") as handle:
            cloudpickle.dump(state, handle)


def make_searcher(sampler: str, run_dir: Path, document: dict[str, Any], run_id: str | None, selection: Selection,
                  max_concurrent: int, startup_trials: int, seed: int, start: list[dict], max_epochs: int) -> Searcher:
    """The searcher for a new run: Optuna's `sampler` ("tpe", "gp" or "random", see `tuning.samplers`) on a persistent study."""
    open_study(run_dir, document, selection.mode, run_id)
    return PrunedAwareOptunaSearch(max_epochs=max_epochs, sampler=make_sampler(sampler, startup_trials, max_concurrent > 1, seed),
                                   points_to_evaluate=list(start) or None, study_name=STUDY_NAME,
                                   storage=study_storage(study_url(run_dir)))
