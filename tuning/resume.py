"""Which run a command means: a new one, the demo again under a free name, or `--resume` of a saved one.

A resumed run continues as it was saved in `experiment.json`, wherever its folder is now: a flag
or `--experiment` that would change it is refused, naming the flag. A new run may not take a
folder that holds another run's trials.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ray import tune

from carclf.config import apply_overrides
from tuning.errors import SearchError
from tuning.experiment import DEMO_EXPERIMENT, Experiment, experiment_from_document, load_experiment
from tuning.run_folder import RunFolder
from tuning.searcher import study_trials

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
    run_dir = Path(args.resume).expanduser().resolve() if args.resume else load_experiment(args.experiment or DEMO_EXPERIMENT, items).run_dir
    folder = RunFolder(run_dir)
    if not folder.experiment_file.is_file():
        raise SearchError(f"{run_dir}: nothing to resume (no {folder.experiment_file.name}); run without --resume")
    document, resolved_from = folder.read_experiment()
    document["run"].update(storage_path=str(run_dir.parent), name=run_dir.name)
    where = str(folder.experiment_file)
    saved = experiment_from_document(document, where)
    given = as_requested(document, resolved_from)  # flags and --experiment are compared with what the run was asked
    asked = experiment_from_document(given, where)
    requests = [(flag, item) for flag, item in overrides if item.split("=", 1)[0].strip() not in LOCATION_KEYS]
    requested = experiment_from_document(apply_overrides(given, [item for _, item in requests], "the command line"), where)
    differing = differences(requested, asked)
    culprits = [flag for flag, item in requests if ".".join(item.split("=", 1)[0].strip().split(".")[:2]) in differing]
    if culprits:
        raise SearchError(f"{', '.join(culprits)}: --resume continues {run_dir.name} as it was saved ({where}); drop the flag, "
                          "or start a new run with another --name")
    if args.experiment:
        differing = differences(load_experiment(args.experiment, items), asked)
        if differing:
            raise SearchError(f"--experiment {args.experiment}: differs from the saved run in {', '.join(sorted(differing))}; "
                              f"--resume continues the run as saved (pass --resume {run_dir} alone)")
    return saved


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
    removed, since the new run may differ.
    """
    folder = RunFolder(experiment.run_dir)
    stage = folder.stage()
    if tune.Tuner.can_restore(str(folder.path)) or stage not in (None, "started") or study_trials(folder.path):
        raise SearchError(f"{folder.path}: a run with this name exists; pass --resume to continue it, or another --name")
    if stage == "started":
        logger.info("%s: the run of this name stopped before its first trial; starting it again", folder.path)
        for path in (folder.study_file, folder.transfer_file):
            path.unlink(missing_ok=True)
