"""`python -m tuning.search`: from an experiment file to the best model and its report.

Reads and validates the experiment, indexes the dataset and decodes every image once (before Ray
starts, so every checkable mistake stops the run at once; `--dry-run` stops there), resolves the
backbone weights to a file, starts a local Ray cluster (dashboard on 127.0.0.1) or joins one
(`--address`), computes cached head features, runs Optuna's TPE with ASHA early stopping, writes
every reported epoch to `trials.parquet`, retrains the best configuration on train + validation,
evaluates it on the test split, and writes the report. With no arguments it runs the demo.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tuning.experiment import DEMO_EXPERIMENT, Experiment, experiment_from_document, load_experiment


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tuning.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="experiment TOML file, or the name of a shipped one such as stanford_cars "
                                             f"(default: the demo, {DEMO_EXPERIMENT.name})")
    parser.add_argument("--data-dir", help="dataset root (data.root)")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (search.max_concurrent)")
    parser.add_argument("--cpus-per-trial", type=float, help="resources.cpus_per_trial")
    parser.add_argument("--gpus-per-trial", type=float, help="resources.gpus_per_trial (fractions share a GPU)")
    parser.add_argument("--address", help="join an existing Ray cluster (e.g. auto, or ray://host:10001)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", help="bind the local dashboard here (default 127.0.0.1)")
    parser.add_argument("--no-dashboard", action="store_true", help="start the local cluster without Ray's dashboard")
    parser.add_argument("--storage-path", help="where runs are stored (run.storage_path)")
    parser.add_argument("--name", help="run name (run.name; default: the experiment file's name)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                        help="continue an interrupted run as it was saved: the run named by the other flags, or RUN_DIR")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the search (no retraining, evaluation or report)")
    parser.add_argument("--dry-run", action="store_true", help="check everything (data, images, weights) and print the plan; start nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any experiment value, e.g. --set train.momentum=0.8 (repeatable)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and argument errors answer here, before the imports below load Ray, Keras and TensorFlow

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402

from carclf.config import ConfigError, apply_overrides  # noqa: E402
from carclf.data.batches import epoch_images  # noqa: E402
from carclf.data.sources import prepare_dataset  # noqa: E402
from carclf.data.store import StoreError  # noqa: E402
from carclf.data.table import DatasetError, load_index, rows_for, save_index  # noqa: E402
from carclf.features import FeatureCacheError  # noqa: E402
from carclf.files import atomic_path, cache_folder, read_json, require_free_space, write_json  # noqa: E402
from carclf.model import WeightsError  # noqa: E402
from carclf.pretrained import synthetic_backbone_path  # noqa: E402
from carclf.runtime import trial_environment  # noqa: E402
from carclf.weights import IMAGENET_FILE, IMAGENET_URL, check_weights_file  # noqa: E402
from tuning import run_folder  # noqa: E402
from tuning.driver_tasks import prepare_head_features, resolve_backbone, run_transfer_probe, whole_gpu_task  # noqa: E402
from tuning.report import write_report  # noqa: E402
from tuning.retrain import retrain_and_evaluate  # noqa: E402
from tuning.samplers import choose_sampler  # noqa: E402
from tuning.scheduler import NoiseAwareASHA, read_rung_decisions, rung_milestones  # noqa: E402
from tuning.search_space import param_space  # noqa: E402
from tuning.searcher import STUDY_FILE, StudyError, make_searcher, relocate_study, study_trials  # noqa: E402
from tuning.trainable import CarClassifierTrainable  # noqa: E402
from tuning.trials import Selection, against_start, best_trial, top_trials, trials_table, useful_fraction, within_noise  # noqa: E402

logger = logging.getLogger("tuning.search")
EXPERIMENT_FILE = "experiment.json"
DATASET_FILE = "dataset.parquet"
TRIALS_FILE = "trials.parquet"
TRANSFER_FILE = "transfer.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SMALL_VALIDATION = 200
LOW_DISK_BYTES = 50 * 2**20
CHECKPOINT_BYTES = 256 * 2**20  # ResNet50's weights and momentum at any image size (239 MB measured at depth 16)
# Flags that set experiment values; on --resume each may only repeat what the run saved.
EXPERIMENT_FLAGS = {"data_dir": "data.root", "num_samples": "search.num_samples", "max_concurrent": "search.max_concurrent",
                    "cpus_per_trial": "resources.cpus_per_trial", "gpus_per_trial": "resources.gpus_per_trial",
                    "storage_path": "run.storage_path", "name": "run.name"}
LOCATION_KEYS = ("run.storage_path", "run.name")
EXPECTED_ERRORS = (ConfigError, DatasetError, StoreError, FeatureCacheError, WeightsError, StudyError,
                   run_folder.RunInUseError, run_folder.RunFolderError)


class SearchError(RuntimeError):
    """The search cannot start or did not finish."""


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
    if args.resume is None:
        experiment = load_experiment(args.experiment or DEMO_EXPERIMENT, [item for _, item in overrides])
        named = args.experiment or any(item.split("=", 1)[0].strip() == "run.name" for _, item in overrides)
        return experiment if named else next_demo_run(experiment, [item for _, item in overrides])
    if args.resume:
        run_dir = Path(args.resume).expanduser().resolve()
    else:
        run_dir = load_experiment(args.experiment or DEMO_EXPERIMENT, [item for _, item in overrides]).run_dir
    saved_path = run_dir / EXPERIMENT_FILE
    if not saved_path.is_file():
        raise SearchError(f"{run_dir}: nothing to resume (no {EXPERIMENT_FILE}); run without --resume")
    document = read_json(saved_path)
    document["run"].update(storage_path=str(run_dir.parent), name=run_dir.name)
    saved = experiment_from_document(document, str(saved_path))
    requests = [(flag, item) for flag, item in overrides if item.split("=", 1)[0].strip() not in LOCATION_KEYS]
    requested = experiment_from_document(apply_overrides(document, [item for _, item in requests], "the command line"), str(saved_path))
    differing = {key for key, value in _comparable(requested).items() if _comparable(saved).get(key) != value}
    culprits = [flag for flag, item in requests if ".".join(item.split("=", 1)[0].strip().split(".")[:2]) in differing]
    if culprits:
        raise SearchError(f"{', '.join(culprits)}: --resume continues {run_dir.name} as it was saved ({saved_path}); drop the flag, "
                          "or start a new run with another --name")
    if args.experiment:
        requested = load_experiment(args.experiment, [item for _, item in overrides])
        differing = sorted(key for key, value in _comparable(requested).items() if _comparable(saved).get(key) != value)
        if differing:
            raise SearchError(f"--experiment {args.experiment}: differs from the saved run in {', '.join(differing)}; "
                              f"--resume continues the run as saved (pass --resume {run_dir} alone)")
    return saved


def next_demo_run(demo: Experiment, overrides: list[str]) -> Experiment:
    """The demo, run again without a name: a finished demo run is kept, and this one is named demo-2 (then
    demo-3, ...), so the README's first line works every time. An unfinished one is left for --resume."""
    experiment, number = demo, 1
    while run_folder.stage(experiment.run_dir) == "finished":
        number += 1
        experiment = load_experiment(DEMO_EXPERIMENT, [*overrides, f"run.name='{demo.name}-{number}'"])
    if experiment is not demo:
        logger.info("%s is a finished demo run, kept as it is; this run is %s (--name chooses a name)", demo.run_dir, experiment.run_dir)
    return experiment


def _comparable(experiment: Experiment) -> dict[str, Any]:
    """An experiment as `table.key` → value, without where it is stored."""
    flat = {f"{table}.{key}": value for table, values in experiment.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}
    return {key: value for key, value in flat.items() if key not in LOCATION_KEYS}


def describe_plan(experiment: Experiment, args: argparse.Namespace) -> str:
    search, scheduler, resources = experiment.search, experiment.scheduler, experiment.resources
    data, train = experiment.settings.data, experiment.settings.train
    sampler, why = choose_sampler(search.algorithm, search.num_samples)
    algorithm = (f"Optuna {sampler.upper()} ({search.optuna_startup_trials} random start-up trials; {why})" if sampler != "random"
                 else f"Optuna random search ({why})")
    warm_up = experiment.warm_up_epochs()
    lines = [
        f"experiment   {experiment.source}",
        f"run folder   {experiment.run_dir}{' (resuming)' if args.resume is not None else ''}",
        f"data         {data.format} at {data.root or '(synthetic cache)'}, {data.image_size} px, crop to box: {data.crop_to_bbox}",
        f"model        ResNet50, weights {experiment.settings.model.weights}, precision {train.precision}, Keras backend {keras.backend.backend()}",
        f"search       {search.num_samples} trials of {algorithm}, seed {search.seed}, {search.max_concurrent} at once, "
        f"{search.direction} {search.metric} (each trial's best epoch)" + (f", budget {search.time_budget_s:.0f} s" if search.time_budget_s else ""),
        f"space        {search.space}",
        f"starts at    {search.start}",
        (f"ASHA         up to {scheduler.max_epochs} epochs; rungs at {rung_milestones(scheduler.grace_period, scheduler.max_epochs, scheduler.reduction_factor)} "
         f"epochs of a trial's final phase{f' (after up to {warm_up} head-only warm-up epochs)' if warm_up else ''}"
         + (f"; a trial with head_epochs >= {scheduler.max_epochs} never fine-tunes and is judged as a head-only trial"
            if warm_up >= scheduler.max_epochs else "") + ", keeping the top "
         f"1/{scheduler.reduction_factor:g}" + (f" and any trial within {scheduler.noise_z:g} standard errors of the cut" if scheduler.noise_z else "")
         if scheduler.kind == "asha" else f"no early stopping: every trial trains {scheduler.max_epochs} epochs"),
        f"resources    {resources.cpus_per_trial} CPU + {resources.gpus_per_trial} GPU per trial",
        f"cluster      {args.address or 'local'}",
        f"then         {'retrain on train + val, evaluate on test, report' if experiment.run.retrain else 'stop (no retraining)'}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Prepared:
    """What the trials need, made before Ray starts: the table, the store and their settings."""

    index: pd.DataFrame
    store: Path
    experiment: Experiment  # with train.epoch_images set for equal epochs
    seconds: float  # indexing, checking and decoding


def prepare(experiment: Experiment, resume: bool) -> Prepared:
    """Index, check and decode the dataset; fix the images per epoch. On resume, the dataset must not have changed."""
    data = experiment.settings.data
    print(f"indexing and decoding the dataset ({data.format}, {data.image_size} px) ...", flush=True)
    started = time.time()
    dataset = prepare_dataset(data)
    index = dataset.index
    saved_path = experiment.run_dir / DATASET_FILE
    if resume and saved_path.is_file():
        saved = load_index(saved_path)
        if not saved.equals(index):
            raise SearchError(f"{saved_path}: the dataset changed since this run started (files, annotations or settings); "
                              "start a new run instead of resuming")
    counts = index["split"].value_counts().to_dict()
    print(f"dataset: {len(index)} images, {index['label'].nunique()} classes, {counts}"
          + (f", {dataset.skipped} bad row(s) skipped" if dataset.skipped else ""), flush=True)
    train_rows = len(rows_for(index, "train"))
    sizes = experiment.batch_sizes()
    if experiment.settings.train.epoch_images:
        images = experiment.settings.train.epoch_images
        if images < max(sizes):
            raise ConfigError(f"{experiment.source} [train]: key epoch_images ({images}) must be at least the largest batch size ({max(sizes)})")
    elif max(sizes) > train_rows:
        raise ConfigError(f"{experiment.source}: a batch size of {max(sizes)} exceeds the {train_rows} training images")
    else:
        images = epoch_images(train_rows, sizes)
    return Prepared(index, dataset.store, experiment.with_settings(experiment.settings.with_train(epoch_images=images)),
                    time.time() - started)


def describe_weights(experiment: Experiment) -> str:
    """Where the backbone's weights will come from; a named file must exist and hold ResNet50."""
    settings = experiment.settings
    weights = settings.model.weights
    if not settings.model.pretrained:
        return "random initialisation"
    if weights == "imagenet":
        cached = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / IMAGENET_FILE
        return f"ImageNet, {'cached at ' + str(cached) if cached.is_file() else 'downloaded once from ' + IMAGENET_URL}"
    if weights == "synthetic":
        path = synthetic_backbone_path(settings)
        return f"carclf's synthetic pretrained backbone, {'cached at ' + str(path) if path.is_file() else 'built once, before the trials'}"
    return f"file {check_weights_file(weights)}"


def warnings_for(prepared: Prepared) -> list[str]:
    """What a user should know before the trials start: noisy validation, a random search, nothing to choose."""
    experiment, notes = prepared.experiment, []
    validation = len(rows_for(prepared.index, "val"))
    if validation < SMALL_VALIDATION:
        spread = 100 * math.sqrt(0.25 / validation)
        notes.append(f"the validation split has only {validation} images: an accuracy near 50 % has a standard error of "
                     f"{spread:.0f} points, so close trials are within noise (the report says which)")
    search = experiment.search
    if choose_sampler(search.algorithm, search.num_samples)[0] != "random" and search.num_samples <= search.optuna_startup_trials:
        notes.append(f"{search.num_samples} trials with {search.optuna_startup_trials} random start-up trials: the search "
                     "will be random (raise search.num_samples or lower search.startup_trials)")
    data = experiment.settings.data
    if experiment.settings.model.weights == "synthetic" and data.format != "synthetic" and not (Path(data.root) / "synthetic.json").is_file():
        notes.append(f"model.weights is 'synthetic', carclf's backbone pretrained on drawn shapes, but {data.root} was not made by "
                     "carclf: on real images it may transfer worse than random weights (the transfer probe says); use "
                     "model.weights = 'imagenet', a weights file, or 'none'")
    if experiment.nothing_to_choose():
        notes.append("every hyperparameter in [search.space] has a single value: the search has nothing to choose")
    return notes


def start_ray(args: argparse.Namespace, experiment: Experiment) -> None:
    """Start a local cluster with the dashboard on `--dashboard-host`, or join `--address`.

    Trial processes get the driver's Keras backend, their GPU memory share and the persistent
    compilation cache through the job's environment (`carclf.runtime.trial_environment`). The
    dashboard alone is given up when Ray's error is about it; any other failure to start or join
    is a `SearchError` that says so.
    """
    compile_cache = cache_folder(experiment.settings.data.cache_dir, "compilation")
    environment = trial_environment(keras.backend.backend(), experiment.resources.gpus_per_trial, compile_cache)
    runtime_env = {"env_vars": environment}
    try:
        if args.address:
            context = ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
        else:
            # address="local": always a cluster of our own, never a `ray start` cluster found on this machine
            options = dict(address="local", num_cpus=args.num_cpus, runtime_env=runtime_env, log_to_driver=False)
            try:
                context = ray.init(include_dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host, **options)
            except Exception as error:  # the dashboard's extra packages are missing, or it failed: go on without it
                if args.no_dashboard or "dashboard" not in str(error).lower():
                    raise
                logger.warning("Ray's dashboard could not start (%s); running without it", error)
                ray.shutdown()
                context = ray.init(include_dashboard=False, **options)
    except Exception as error:  # Ray raises Exception, TimeoutError, ConnectionError, OSError...
        ray.shutdown()
        cluster = f"could not join the Ray cluster at {args.address}" if args.address else "Ray's local cluster did not start"
        raise SearchError(f"{cluster}: {error}; no trial ran: the same command starts the run again") from None
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def check_cluster_resources(experiment: Experiment) -> None:
    """Stop at once if no node can ever host one trial, instead of leaving trials pending forever."""
    resources = experiment.resources
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    if resources.gpus_per_trial > most_gpus:
        raise SearchError(
            f"resources.gpus_per_trial is {resources.gpus_per_trial} but no node of this Ray cluster has "
            f"{'any GPU' if most_gpus == 0 else f'more than {most_gpus}'}; run on CPU with --gpus-per-trial 0 "
            "(or --set resources.gpus_per_trial=0)"
        )
    if resources.cpus_per_trial > most_cpus:
        raise SearchError(f"resources.cpus_per_trial is {resources.cpus_per_trial} but the largest node has {most_cpus} CPUs; "
                          "lower --cpus-per-trial")


def trial_slots(experiment: Experiment) -> int:
    """How many trials this cluster can run at once: `search.max_concurrent`, or fewer where its CPUs or GPUs run out."""
    resources, cluster = experiment.resources, ray.cluster_resources()
    slots = [experiment.search.max_concurrent, int(cluster.get("CPU", 0) // resources.cpus_per_trial)]
    if resources.gpus_per_trial:
        slots.append(int(cluster.get("GPU", 0) // resources.gpus_per_trial))
    return max(1, min(slots))


def transfer_probe(experiment: Experiment, prepared: Prepared) -> dict[str, Any] | None:
    """The transfer probe's result, computed once per run (`TRANSFER_FILE`) and said on the console; a warning
    when the pretrained backbone's features are not clearly better than random ones."""
    path = experiment.run_dir / TRANSFER_FILE
    if path.is_file():
        return read_json(path)
    probe = run_transfer_probe(experiment, prepared.index, prepared.store)
    if probe is None:
        return None
    print(probe.describe(), flush=True)
    if probe.verdict != "better":
        logger.warning("model.weights = %r: the pretrained backbone's frozen features are %s than random weights' on this data (%s); "
                       "head-only and shallow trials may be wasted: consider other weights, or a space of deeper unfreeze_depth",
                       prepared.experiment.settings.model.weights, "no better" if probe.verdict == "not better" else "not clearly better",
                       probe.describe())
    write_json(path, probe.to_dict())
    return probe.to_dict()


def make_tuner(experiment: Experiment, prepared: Prepared, features: str | None, resume: bool) -> tune.Tuner:
    """The `Tuner`: an Optuna sampler on `RUN_DIR/study.db` behind a concurrency limit, ASHA on final-phase epochs."""
    search, run_dir = experiment.search, experiment.run_dir
    selection = Selection(search.metric, search.direction)
    trainable = tune.with_parameters(CarClassifierTrainable, index=prepared.index, settings=experiment.trial_settings(),
                                     store=str(prepared.store), features=features, selection=selection,
                                     checkpoint_minutes=experiment.run.checkpoint_minutes)
    trainable = tune.with_resources(trainable, {"cpu": experiment.resources.cpus_per_trial, "gpu": experiment.resources.gpus_per_trial})
    if resume:
        relocate_study(run_dir)
        NoiseAwareASHA.relocated_run_dir = run_dir
        return tune.Tuner.restore(str(run_dir), trainable=trainable, resume_errored=True)
    searcher = make_searcher(choose_sampler(search.algorithm, search.num_samples)[0], run_dir, experiment.to_dict(), selection,
                             search.max_concurrent, search.optuna_startup_trials, search.seed, search.start,
                             experiment.scheduler.max_epochs)
    asha = experiment.scheduler
    if asha.kind == "asha":
        scheduler = NoiseAwareASHA(metric=selection.objective, mode=selection.mode, score_metric=selection.metric,
                                   max_epochs=asha.max_epochs, grace_period=asha.grace_period,
                                   reduction_factor=asha.reduction_factor, validation_size=len(rows_for(prepared.index, "val")),
                                   noise_z=asha.noise_z, run_dir=run_dir)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space(search.space),
        tune_config=tune.TuneConfig(
            metric=selection.objective, mode=selection.mode, num_samples=search.num_samples,
            search_alg=searcher, max_concurrent_trials=search.max_concurrent,
            scheduler=scheduler, time_budget_s=search.time_budget_s or None, reuse_actors=experiment.run.reuse_workers,
        ),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=experiment.run.checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=experiment.run.max_failures),
            verbose=1,
        ),
    )


def search_interrupted(experiment: Experiment, elapsed_s: float) -> bool:
    """True when trials are still pending or paused, or samples were never started (and no budget ran out).

    Read from the run's saved experiment state, because after a SIGINT Ray returns normally with
    the trials it had created so far.
    """
    statuses = [trial.status for trial in tune.ExperimentAnalysis(str(experiment.run_dir)).trials]
    if any(status not in ("TERMINATED", "ERROR") for status in statuses):
        return True
    budget = experiment.search.time_budget_s
    return len(statuses) < experiment.search.num_samples and not (budget and elapsed_s >= budget)


def summarize(trials: pd.DataFrame, experiment: Experiment, validation_size: int, top: int = 5) -> str:
    """The best trials (best epoch, score and standard error, settings), and which are within noise of the best."""
    selection = Selection(experiment.search.metric, experiment.search.direction)
    rows = top_trials(trials, selection, top, validation_size)
    if not rows:
        return "no trial reported a result"
    with pd.option_context("display.width", 180, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        text = (f"top {len(rows)} of {trials['trial_id'].nunique()} trials by {selection.metric} at each trial's best epoch "
                f"({validation_size} validation images):\n{pd.DataFrame(rows).set_index('trial_id')}")
    close = within_noise(rows, selection.metric)
    if close:
        text += f"\nwithin noise of the best (difference < 1.96 standard errors): {', '.join(close)}"
    if experiment.nothing_to_choose():
        text += "\nthe search space has a single point: the search had nothing to choose"
    gain = against_start(trials, experiment.search.start, selection, validation_size)
    if gain:
        text += "\n" + gain["statement"]
    return text


def run_search(experiment: Experiment, prepared: Prepared, args: argparse.Namespace) -> Path:
    """The trials, then retraining, evaluation and the report; returns the run folder."""
    run_dir, resume = experiment.run_dir, args.resume is not None
    started = time.time()
    reached = run_folder.stage(run_dir)
    kept = experiment.search.max_concurrent * experiment.run.checkpoints_to_keep + 1  # + the best model
    require_free_space(run_dir, kept * CHECKPOINT_BYTES, f"{kept - 1} trial checkpoint(s) and the best model")
    if not resume:
        write_json(run_dir / EXPERIMENT_FILE, experiment.to_dict())
        save_index(prepared.index, run_dir / DATASET_FILE)
        run_folder.mark(run_dir, "started")
    start_ray(args, experiment)
    try:
        check_cluster_resources(experiment)  # before any long preparation: a search must fail at once
        experiment = resolve_backbone(prepared.experiment)
        validation_size = len(rows_for(prepared.index, "val"))
        if reached != "searched":
            features_started = time.time()
            transfer = transfer_probe(experiment, prepared)
            features = prepare_head_features(experiment, prepared.index, prepared.store)
            fit_started = time.time()
            results = make_tuner(experiment, prepared, features, resume and tune.Tuner.can_restore(str(run_dir))).fit()
            stopped = {d["trial_id"] for d in read_rung_decisions(run_dir) if d["decision"] == "stopped"}
            trials = trials_table(results, experiment.scheduler.max_epochs, stopped)
            with atomic_path(run_dir / TRIALS_FILE) as partial:
                trials.to_parquet(partial, index=False)
            if search_interrupted(experiment, time.time() - fit_started):
                raise SearchError(f"the search was interrupted; continue it with: python -m tuning.search --resume {run_dir}")
            write_json(run_dir / "search.json", {"wall_time_s": time.time() - started, "finished": time.time(),
                                                 "validation_size": validation_size, "prepare_s": prepared.seconds,
                                                 "features_s": fit_started - features_started, "trials_s": time.time() - fit_started,
                                                 "useful_fraction": useful_fraction(trials, time.time() - fit_started, trial_slots(experiment)),
                                                 "sampler": choose_sampler(experiment.search.algorithm, experiment.search.num_samples)[0],
                                                 "transfer": transfer})
            run_folder.mark(run_dir, "searched")
        trials = pd.read_parquet(run_dir / TRIALS_FILE)
        print(summarize(trials, experiment, validation_size), flush=True)
        if not experiment.run.retrain:
            run_folder.mark(run_dir, "finished")
            return run_dir
        selection = Selection(experiment.search.metric, experiment.search.direction)
        best = best_trial(trials, selection, list(experiment.search.space))
        if best is None:
            errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=str)
            cause = f"; the first trial's error: {errors.iloc[0]}" if len(errors) else ""
            raise SearchError(f"no trial scored {selection.metric} (see {run_dir / TRIALS_FILE}){cause}")
        config, epochs = best
        print(f"retraining the best configuration for its best epoch count ({epochs}) on train + val: {config}", flush=True)
        task = whole_gpu_task(retrain_and_evaluate, experiment)
        metrics = ray.get(task.remote(prepared.index, prepared.store, experiment.settings, config, epochs, run_dir / "best",
                                      max(1, int(experiment.resources.cpus_per_trial))))
    finally:
        ray.shutdown()
    write_report(run_dir)
    run_folder.mark(run_dir, "finished")
    test = metrics["test"]
    if test.get("labeled"):
        print(f"test accuracy {test['accuracy']:.4f}, top-5 {test['top5_accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} "
              f"on {test['count']} images", flush=True)
    else:
        print(test.get("note", "no test metrics"), flush=True)
    return run_dir


def check_new_run(experiment: Experiment) -> None:
    """A new run may not reuse a folder that holds another run's trials.

    A run that stopped before its first trial (Ray did not start, no node had the GPUs asked for)
    holds nothing to keep: its name is free again, so the same command, or the one its error
    advises, starts it afresh. What it wrote before the trials (the study, the transfer probe) is
    removed, since the new run may differ.
    """
    run_dir = experiment.run_dir
    stage = run_folder.stage(run_dir)
    if tune.Tuner.can_restore(str(run_dir)) or stage not in (None, "started") or study_trials(run_dir):
        raise SearchError(f"{run_dir}: a run with this name exists; pass --resume to continue it, or another --name")
    if stage == "started":
        logger.info("%s: the run of this name stopped before its first trial; starting it again", run_dir)
        for name in (STUDY_FILE, TRANSFER_FILE):
            (run_dir / name).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = None
    try:
        experiment = resolve_experiment(args)
        run_dir = experiment.run_dir
        print(describe_plan(experiment, args), flush=True)
        if not args.address and args.dashboard_host not in LOOPBACK:
            logger.warning("the Ray dashboard will listen on %s: anyone who reaches it with the cluster's token (~/.ray/auth_token) "
                           "can run code here, and the token crosses the network unencrypted; prefer an SSH tunnel to 127.0.0.1",
                           args.dashboard_host)
        if args.dry_run:
            prepared = prepare(experiment, resume=False)
            print(f"weights      {describe_weights(experiment)}")
            print(f"epochs       {prepared.experiment.settings.train.epoch_images} training images each, at every batch size")
            for note in warnings_for(prepared):
                print(f"warning: {note}")
            print("dry run: the experiment, the data and the weights are valid; nothing was started")
            return 0
        with run_folder.hold(run_dir):
            if args.resume is not None and run_folder.stage(run_dir) == "finished":
                print(f"{run_dir}: this run is finished; nothing to do (its report is {run_dir / 'report.html'})")
                return 0
            if args.resume is None:
                check_new_run(experiment)
            else:
                run_folder.require_files(run_dir)
            prepared = prepare(experiment, resume=args.resume is not None)
            describe_weights(experiment)
            for note in warnings_for(prepared):
                logger.warning(note)
            run_search(experiment, prepared, args)
    except KeyboardInterrupt:
        print(f"error: interrupted; continue with: python -m tuning.search --resume {run_dir or ''}".rstrip(), file=sys.stderr)
        return 130
    except (SearchError, *EXPECTED_ERRORS) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or run_dir}: {error.strerror or error}", file=sys.stderr)
        return 2
    except Exception:
        if run_dir is not None and run_dir.parent.exists() and shutil.disk_usage(run_dir.parent).free < LOW_DISK_BYTES:
            print(f"error: {run_dir}: no space left on the device (free some, then continue with --resume {run_dir})", file=sys.stderr)
            return 2
        raise
    print(f"done: results in {run_dir} ("
          + ("best/model.keras, trials.parquet, report.html, report.json" if experiment.run.retrain else "trials.parquet") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
