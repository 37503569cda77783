"""Which run a command means: a new one, the demo again under a free name, or `--resume` of a saved one.

A resumed run continues as it was saved in `experiment.json`, wherever its folder is now: a flag
or `--experiment` that would change it is refused, naming the flag. Before Ray starts, the folder is
checked to be one run (`check_resumable`): every file a resume reads is whole, and the study,
ASHA's log and the trials belong to this run and to its experiment as saved. A new run may not
take a folder that holds another run's trials.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from carclf.config import apply_overrides
from carclf.files import absolute_path
from carclf.object_storage import is_uri
from tuning.errors import SearchError
from tuning.experiment import DEMO_EXPERIMENT, Experiment, experiment_from_document, load_experiment
from tuning.run_folder import RESTORE, RunFolder, RunFolderError, SavedExperiment
from tuning.run_storage import RunPlace, run_location
from tuning.search_state import experiment_fingerprint, newest_state_file, read_search_state
from tuning.study_storage import StudyPlace, check_usable, study_identity

logger = logging.getLogger("tuning.search")
# Flags that set experiment values; on --resume each may only repeat what the run saved.
EXPERIMENT_FLAGS = {"data_dir": "data.root", "num_samples": "search.num_samples", "max_concurrent": "search.max_concurrent",
                    "cpus_per_trial": "resources.cpus_per_trial", "gpus_per_trial": "resources.gpus_per_trial",
                    "storage_path": "run.storage_path", "name": "run.name"}
LOCATION_KEYS = ("run.storage_path", "run.name")


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Experiment values given on the command line, as (the flag as typed, `section.key=value`)."""
    overrides = [(f"--set {item}", item) for item in args.overrides]
    for attribute, key in EXPERIMENT_FLAGS.items():
        value = getattr(args, attribute)
        if value is not None:
            flag = f"--{attribute.replace('_', '-')} {value}"
            overrides.append((flag, f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"))
    if args.no_retrain:
        overrides.append(("--no-retrain", "run.retrain=false"))
    return overrides


def resolve_experiment(args: argparse.Namespace) -> Experiment:
    """The experiment to run; on `--resume`, the one saved in the run folder, wherever that folder is now."""
    overrides = flag_overrides(args)
    items = [item for _, item in overrides]
    if args.resume is None:
        experiment = load_experiment(args.experiment or DEMO_EXPERIMENT, items)
        named = args.experiment or any(item.split("=", 1)[0].strip() == "run.name" for item in items)
        return experiment if named else next_demo_run(experiment, items)
    # The folder as named (a link is not followed): a run resumed through a link at its first place continues there.
    if args.resume:
        place = RunPlace.at(args.resume if is_uri(args.resume) else absolute_path(args.resume))
    else:
        place = load_experiment(args.experiment or DEMO_EXPERIMENT, items).run_place
    if place.uri:  # the mirror of a run on object storage is replaced by what the URI holds, while no one else holds it
        with place.hold():
            place.pull(fresh=True)
    folder = place.folder
    if not folder.experiment_file.is_file():
        raise SearchError(f"{place.where}: nothing to resume (no {folder.experiment_file.name}); run without --resume")
    saved_run = folder.read_experiment()
    check_resumable(place, saved_run)
    document = saved_run.document
    name = place.name
    document["run"].update(storage_path=place.storage_path, name=name)
    where = str(folder.experiment_file)
    saved = experiment_from_document(document, where)
    given = as_requested(document, saved_run.requested)  # flags and --experiment are compared with what the run was asked
    asked = experiment_from_document(given, where)
    requests = [(flag, item) for flag, item in overrides if item.split("=", 1)[0].strip() not in LOCATION_KEYS]
    requested = experiment_from_document(apply_overrides(given, [item for _, item in requests], "the command line"), where)
    differing = differences(requested, asked)
    culprits = [flag for flag, item in requests if ".".join(item.split("=", 1)[0].strip().split(".")[:2]) in differing]
    if culprits:
        raise SearchError(f"{', '.join(culprits)}: --resume continues {name} as it was saved ({where}); drop the flag, "
                          "or start a new run with another --name")
    if args.experiment:
        differing = differences(load_experiment(args.experiment, items), asked)
        if differing:
            raise SearchError(f"--experiment {args.experiment}: differs from the saved run in {', '.join(sorted(differing))}; "
                              f"--resume continues the run as saved (pass --resume {place.where} alone)")
    return saved


def check_resumable(place: RunPlace, saved: SavedExperiment) -> None:
    """Before Ray starts, refuse a run folder that is not one run, naming the file at fault.

    Its stage's files must be there and whole (each read through `tuning.run_folder.read_run_file`).
    Once trials ran, the searcher's saved state (`tuning.search_state`) must be there. It, the study
    (`study.db`, or the run's study in `search.storage`: `tuning.study_storage`) and every line of
    `rungs.jsonl` must carry this run's id and, the first two, the fingerprint of
    `experiment.json` as it reads now: another run's file is named as such, and an experiment.json
    changed since the start as that. `trials.parquet` may hold only trials Ray ran in this folder.
    A folder moved since its start while trials are still to be created is refused too
    (`check_not_moved`). Nothing is created or changed here.
    """
    folder = place.folder
    folder.require_files()
    if tune.Tuner.can_restore(str(folder.path)):
        raise RunFolderError(f"{folder.path}: Ray's files are beside carclf's, as an earlier carclf kept them; this one keeps "
                             f"them in {folder.ray_dir.name}/: resume the run with the carclf that started it, or start a new run")
    ray_ran = tune.Tuner.can_restore(str(folder.ray_dir))
    state = read_search_state(folder.ray_dir)
    if state is None and ray_ran:
        raise RunFolderError(f"{folder.ray_dir}: Ray's trials are here but not the searcher's saved state "
                             f"({Searcher.CKPT_FILE_TMPL.format('*')}), the study they belong to: {RESTORE}")
    if state is not None:
        path = newest_state_file(folder.ray_dir)
        check_identity(folder, str(path), path.name, state["identity"], saved)
    study_place = StudyPlace(folder.path, saved.document["search"].get("storage", ""))
    study = study_identity(study_place, saved.run_id)
    if study is not None:
        where = study_place.where
        check_identity(folder, where, f"study ({where})" if study_place.storage else folder.study_file.name, study, saved)
    for number, decision in enumerate(folder.read_rung_decisions(), start=1):
        if saved.run_id and decision.get("run_id") != saved.run_id:
            raise RunFolderError(f"{folder.rungs_file}: decision {number} belongs to another run (run id {decision.get('run_id')}, "
                                 f"not {saved.run_id}): {RESTORE}")
    if folder.trials_file.is_file():
        ran = {trial.trial_id for trial in tune.ExperimentAnalysis(str(folder.ray_dir)).trials}
        foreign = sorted(set(folder.read_trials()["trial_id"]) - ran)
        if foreign:
            raise RunFolderError(f"{folder.trials_file}: holds trials this run did not run ({', '.join(foreign[:3])}"
                                 f"{' ...' if len(foreign) > 3 else ''}): {RESTORE}")
    if state is not None and ray_ran:
        check_not_moved(place, saved, len(state["trials"]))


def check_identity(folder: RunFolder, where: str, what: str, identity: dict[str, Any], saved: SavedExperiment) -> None:
    """`what` (at `where`: the searcher's state or the study), recording the run it belongs to, must name this run and its
    experiment as the folder's experiment.json reads now."""
    if saved.run_id and identity.get("run_id") != saved.run_id:
        raise RunFolderError(f"{where}: belongs to another run (run id {identity.get('run_id')}, from {identity.get('source')}), "
                             f"not to this one ({saved.run_id}): {RESTORE}")
    fingerprint = experiment_fingerprint(saved.document)
    if identity.get("fingerprint") != fingerprint:
        raise RunFolderError(f"{folder.experiment_file}: changed since the run started: it no longer reads as the experiment its "
                             f"{what} was made for (fingerprint {identity.get('fingerprint')}, now {fingerprint}); {RESTORE}")


def check_not_moved(place: RunPlace, saved: SavedExperiment, asked: int) -> None:
    """A run folder moved since its start resumes where it is now, unless trials are still to be created there.

    Ray Tune restores a moved experiment's trials where it is now, but creates the trials still to
    come where the experiment was first stored (its search generator's saved state keeps that place,
    checked with Ray 2.60), so their results would be written to the old folder. Such a run is refused
    with the way out: a link at the first place to the folder, resumed through that link."""
    first = run_location(saved.document["run"]["storage_path"], saved.document["run"]["name"])
    remaining = saved.document["search"]["num_samples"] - asked
    if remaining > 0 and first != (place.uri or os.path.normpath(place.local)):
        raise RunFolderError(f"{place.where}: this run started at {first}, and Ray Tune writes the trials it creates after a resume "
                             f"where the run started; {remaining} trial(s) are still to come. "
                             + (f"Copy it back there, and resume it from there: --resume {first}" if place.uri else
                                f"Put the folder back there, or make a link there to it (ln -s {place.local} {first}), "
                                f"and resume it from there: --resume {first}"))


def as_requested(document: dict[str, Any], resolved_from: dict[str, Any]) -> dict[str, Any]:
    """The saved experiment with each resolved value (the weights file, the images per epoch) put back as it was asked."""
    given = {table: dict(values) if isinstance(values, dict) else values for table, values in document.items()}
    for key, value in resolved_from.items():
        table, name = key.split(".", 1)
        given[table][name] = value
    return given


def resolved_values(resolved: Experiment, requested: Experiment) -> dict[str, Any]:
    """`table.key` → the requested value, for each value that resolving the experiment changed."""
    before = flat(requested)
    return {key: before[key] for key, value in flat(resolved).items() if before.get(key) != value}


def next_demo_run(demo: Experiment, overrides: list[str]) -> Experiment:
    """The demo, run again without a name: a finished demo run is kept, and this one is named demo-2 (then
    demo-3, ...), so the README's first line works every time. An unfinished one is left for --resume."""
    experiment, number = demo, 1
    while RunFolder(experiment.run_dir).stage() == "finished":
        number += 1
        experiment = load_experiment(DEMO_EXPERIMENT, [*overrides, f"run.name='{demo.name}-{number}'"])
    if experiment is not demo:
        logger.info("%s is a finished demo run, kept as it is; this run is %s (--name chooses a name)", demo.run_dir, experiment.run_dir)
    return experiment


def flat(experiment: Experiment) -> dict[str, Any]:
    """An experiment as `table.key` → value."""
    return {f"{table}.{key}": value for table, values in experiment.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}


def differences(one: Experiment, other: Experiment) -> set[str]:
    """The `table.key`s whose values differ, where the runs are stored aside."""
    mine, theirs = flat(one), flat(other)
    return {key for key in mine.keys() | theirs.keys() if key not in LOCATION_KEYS and mine.get(key) != theirs.get(key)}


def check_new_run(experiment: Experiment) -> None:
    """A new run may not reuse a folder that holds another run's trials.

    A run that stopped before its first trial (Ray did not start, no node had the GPUs asked for)
    holds nothing to keep: its name is free again, so the same command, or the one its error
    advises, starts it afresh. What it wrote before the trials (the study, the transfer probe) is
    removed, since the new run may differ. A `search.storage` that cannot be used is refused here.
    """
    folder = RunFolder(experiment.run_dir)
    stage = folder.stage()
    if any(tune.Tuner.can_restore(str(path)) for path in (folder.ray_dir, folder.path)) or stage not in (None, "started"):
        raise SearchError(f"{folder.path}: a run with this name exists; pass --resume to continue it, or another --name")
    if stage == "started":
        logger.info("%s: the run of this name stopped before its first trial; starting it again", folder.path)
        for path in (folder.study_file, folder.transfer_file):
            path.unlink(missing_ok=True)
    check_usable(StudyPlace(folder.path, experiment.search.storage))  # a storage that fails is said before the first trial
