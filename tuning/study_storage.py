"""Where a run's Optuna study is written, and how it is found again: `study.db` in the run folder, or `search.storage`.

The search's memory is the searcher's saved state (`tuning.search_state`), which Ray keeps with the
trials; the study is written from it once the trials stop, for optuna-dashboard and for the user's
own tools. By default it is `RUN_DIR/study.db`, a study named "carclf", written to a new file and
renamed into place. With `search.storage` it goes into the user's own Optuna storage: an SQLAlchemy
URL (`postgresql://`, `mysql://`, `sqlite:///`) or a journal file (any other value, a path), shared
by many runs. There the study is named after the run (`NAME-RUNID` when another study has that
name) and found again by the run id it carries, so a run folder that moved still finds it; written
again (a resumed search), the run's old study is replaced.

Either way the study carries the experiment's fingerprint, source and the run's id, which `--resume`
checks (`tuning.resume.check_resumable`). A URL is shown without its password.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend

from carclf.files import atomic_path
from carclf.object_storage import is_uri
from tuning.run_folder import RESTORE, RunFolder

STUDY_NAME = "carclf"  # the study of a run folder's study.db
IDENTITY_ATTRIBUTE = "carclf_experiment"  # the study's user attribute: fingerprint, source and run id


class StudyError(RuntimeError):
    """The run's study cannot be read or written: a damaged study.db, another program's file, a storage that fails."""


def resolved_storage(storage: str) -> str:
    """`search.storage` made independent of the working folder: a journal file's path, or an SQLite URL's file,
    made absolute (a resumed run or a worker elsewhere finds the same study); other URLs as given."""
    if not storage:
        return storage
    if not is_uri(storage):
        return str(Path(storage).expanduser().absolute())
    url = sqlalchemy.engine.make_url(storage)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).expanduser().absolute()))
    return url.render_as_string(hide_password=False)


def check_storage_setting(storage: str) -> None:
    """A ValueError saying what is wrong with a `search.storage` value that cannot name a study's storage."""
    if not storage:
        return
    if is_uri(storage):
        try:
            url = sqlalchemy.engine.make_url(storage)
        except sqlalchemy.exc.ArgumentError:
            raise ValueError(f"{shown(storage)!r} is not an SQLAlchemy URL (for example postgresql://user@host/db or "
                             "sqlite:////path/studies.db)") from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError(f"{storage!r} names no SQLite file; an in-memory study would be lost with the process")
    elif storage.endswith("/") or Path(storage).expanduser().is_dir():
        raise ValueError(f"{storage!r} is a folder; a journal storage is a file (for example runs/studies.log)")


def shown(storage: str) -> str:
    """A storage as messages show it: a URL's password hidden."""
    if not is_uri(storage):
        return storage
    try:
        return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return storage.split("://", 1)[0] + "://..."


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file, its path escaped: a run named `run?x=1` is a folder, not a query."""
    return sqlalchemy.engine.URL.create("sqlite", database=str(Path(path).resolve())).render_as_string()


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for a URL (its tables made if new) or a journal file."""
    if is_uri(storage):
        return optuna.storages.RDBStorage(storage)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


@dataclass(frozen=True)
class StudyPlace:
    """Where the study of the run in `run_dir` is written: its `study.db`, or `storage` (`search.storage`)."""

    run_dir: Path
    storage: str = ""

    @property
    def in_run_folder(self) -> bool:
        return not self.storage

    @property
    def where(self) -> str:
        """What messages name: the study file, or the storage (password hidden)."""
        return str(RunFolder(self.run_dir).study_file) if self.in_run_folder else f"search.storage {shown(self.storage)}"

    @property
    def dashboard_storage(self) -> str:
        """What to give optuna-dashboard (and Optuna's `load_study`) to open the study."""
        return sqlite_url(RunFolder(self.run_dir).study_file) if self.in_run_folder else self.storage

    @property
    def dashboard_command(self) -> str:
        """The command that shows the study, as the console prints it (a URL's password hidden)."""
        return f"optuna-dashboard {shown(self.dashboard_storage)}"

    @contextlib.contextmanager
    def opened(self, at: str = "") -> Iterator[optuna.storages.BaseStorage]:
        """The storage (or the one `at` names: a study.db being written), open for the block; SQLAlchemy's and Optuna's
        errors turned into a `StudyError` naming the study file or the storage and what to do (a truncated copy,
        another program's file, a server that does not answer, a database driver not installed)."""
        storage = None
        try:
            storage = open_storage(at or self.dashboard_storage)
            yield storage
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, OSError) as error:
            reason = (getattr(error, "strerror", None) or str(error).splitlines()[0][:200]) if str(error) else type(error).__name__
            if self.in_run_folder:
                raise StudyError(f"{self.where}: damaged, or not an Optuna study ({reason}); {RESTORE}") from None
            raise StudyError(f"{self.where}: cannot be used ({reason}); check the URL or the path, that the server answers, "
                             "and that its database driver is installed") from None
        finally:
            if isinstance(storage, optuna.storages.RDBStorage):
                storage.engine.dispose()  # a SQLite file is then free to be renamed; a journal holds no connection


def check_usable(place: StudyPlace) -> None:
    """Open `search.storage` and list its studies, so a URL, a server or a driver that fails is said at once (the
    run folder's study.db is made when the trials stop)."""
    if not place.in_run_folder:
        with place.opened() as storage:
            optuna.get_all_study_summaries(storage, include_best_trial=False)


def study_identity(place: StudyPlace, run_id: str | None) -> dict[str, Any] | None:
    """What the run's study says it was written for (the experiment's fingerprint and source, the run's id), or None
    when it has not been written yet. In the run folder the study.db's only study, which must be carclf's (it
    may be another run's copy: the caller compares the run id); in `search.storage` the study carrying `run_id`."""
    if place.in_run_folder and not RunFolder(place.run_dir).study_file.is_file():
        return None
    with place.opened() as storage:
        identities = {summary.study_name: summary.user_attrs.get(IDENTITY_ATTRIBUTE, {})
                      for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if place.in_run_folder:
        if STUDY_NAME not in identities:
            raise StudyError(f"{place.where}: holds no carclf study (it has {sorted(identities) or 'none'}); {RESTORE}")
        return identities[STUDY_NAME]
    return next((identity for identity in identities.values() if run_id and identity.get("run_id") == run_id), None)


def write_study(place: StudyPlace, identity: dict[str, Any], direction: str, trials: list[optuna.trial.FrozenTrial]) -> str:
    """Write the run's study (its identity as a user attribute, then its trials); returns the study's name.

    In the run folder, to a new file renamed into place, so a reader never sees half of it; in
    `search.storage`, the run's earlier study (a search resumed after an interrupted one wrote it)
    is deleted first."""
    if place.in_run_folder:
        with atomic_path(RunFolder(place.run_dir).study_file) as partial:
            with place.opened(at=sqlite_url(partial)) as storage:  # closed before the file is renamed: nothing writes to the partial name afterwards
                add_study(storage, STUDY_NAME, identity, direction, trials)
        return STUDY_NAME
    with place.opened() as storage:
        names = set()
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            if summary.user_attrs.get(IDENTITY_ATTRIBUTE, {}).get("run_id") == identity["run_id"]:
                optuna.delete_study(study_name=summary.study_name, storage=storage)
            else:
                names.add(summary.study_name)
        name = place.run_dir.name if place.run_dir.name not in names else f"{place.run_dir.name}-{identity['run_id']}"
        add_study(storage, name, identity, direction, trials)
    return name


def quiet_study(**options: Any) -> optuna.Study:
    """`optuna.create_study` without Optuna's "A new study created in ..." line: the searcher makes an in-memory study
    per proposal and the report one for parameter importances, which would print among carclf's lines, and the search
    names the study it writes itself."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(**options)
    finally:
        optuna.logging.set_verbosity(level)


def add_study(storage: optuna.storages.BaseStorage, name: str, identity: dict[str, Any], direction: str,
              trials: list[optuna.trial.FrozenTrial]) -> None:
    study = quiet_study(storage=storage, study_name=name, direction=direction)
    study.set_user_attr(IDENTITY_ATTRIBUTE, identity)
    study.add_trials(trials)
