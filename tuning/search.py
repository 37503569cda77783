"""`python -m tuning.search`: from an experiment file to the best model and its report.

Reads and validates the experiment, indexes the dataset once (`RUN_DIR/dataset.parquet`), starts
a local Ray cluster (dashboard on 127.0.0.1) or joins one (`--address`), runs Optuna's TPE behind a
concurrency limit with ASHA early stopping, writes every reported row to `trials.parquet`,
retrains the best configuration on train + validation, evaluates it on the test split, and writes
the report. With no arguments it runs the demo experiment on synthetic data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from carclf.config import ConfigError
from carclf.data.pipeline import ImageDecodeError
from carclf.data.sources import index_dataset
from carclf.data.store import build_image_store
from carclf.features import build_head_features
from carclf.data.table import DatasetError, load_index, save_index
from carclf.files import atomic_path, read_json, write_json
from carclf.model import WeightsError
from carclf.trainable import train_car_classifier
from tuning.experiment import DEMO_EXPERIMENT, Experiment, experiment_from_document, load_experiment
from tuning.report import top_trials, write_report
from tuning.retrain import retrain_and_evaluate
from tuning.search_space import param_space

logger = logging.getLogger("tuning.search")
EXPERIMENT_FILE = "experiment.json"
DATASET_FILE = "dataset.parquet"
TRIALS_FILE = "trials.parquet"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SearchError(RuntimeError):
    """The search cannot start or did not finish."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tuning.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=str(DEMO_EXPERIMENT), help="experiment TOML file (default: the demo)")
    parser.add_argument("--data-dir", help="dataset root (data.root)")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (search.max_concurrent)")
    parser.add_argument("--cpus-per-trial", type=float, help="resources.cpus_per_trial")
    parser.add_argument("--gpus-per-trial", type=float, help="resources.gpus_per_trial (fractions share a GPU)")
    parser.add_argument("--address", help="join an existing Ray cluster (e.g. auto, or ray://host:10001)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", help="bind the local dashboard here (default 127.0.0.1)")
    parser.add_argument("--storage-path", help="where runs are stored (run.storage_path; a folder or s3://...)")
    parser.add_argument("--name", help="run name (run.name; default: the experiment file's name)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run; finished trials are kept")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the search (no retraining, evaluation or report)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan without starting Ray")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any experiment value, e.g. --set train.epochs=3 (repeatable)")
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags as `section.key=value` overrides, applied after `--set`."""
    flags = {
        "data.root": args.data_dir, "search.num_samples": args.num_samples, "search.max_concurrent": args.max_concurrent,
        "resources.cpus_per_trial": args.cpus_per_trial, "resources.gpus_per_trial": args.gpus_per_trial,
        "run.storage_path": args.storage_path, "run.name": args.name,
    }
    values = [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}" for key, value in flags.items() if value is not None]
    return args.overrides + values + (["run.retrain=false"] if args.no_retrain else [])


def resolve_experiment(args: argparse.Namespace) -> Experiment:
    """The experiment to run; on `--resume`, the one saved in the run folder, so nothing drifts."""
    experiment = load_experiment(args.experiment, flag_overrides(args))
    saved = experiment.run_dir / EXPERIMENT_FILE
    if args.resume:
        if not saved.is_file():
            raise SearchError(f"{experiment.run_dir}: nothing to resume (no {EXPERIMENT_FILE}); run without --resume")
        experiment = experiment_from_document(read_json(saved), str(saved))
    return experiment


def describe_plan(experiment: Experiment, args: argparse.Namespace) -> str:
    search, scheduler, resources = experiment.search, experiment.scheduler, experiment.resources
    data = experiment.settings.data
    lines = [
        f"experiment   {experiment.source}",
        f"run folder   {experiment.run_dir}{' (resuming)' if args.resume else ''}",
        f"data         {data.format} at {data.root or '(synthetic cache)'}, {data.image_size} px, crop to box: {data.crop_to_bbox}",
        f"model        ResNet50, weights {experiment.settings.model.weights}",
        f"search       {search.num_samples} trials of {'Optuna TPE' if search.algorithm == 'optuna' else 'random search'} "
        f"(seed {search.seed}), {search.max_concurrent} at once, "
        f"{search.mode} {search.metric}" + (f", budget {search.time_budget_s:.0f} s" if search.time_budget_s else ""),
        f"space        {search.space}",
        f"starts at    {search.start}",
        (f"ASHA         up to {scheduler.max_epochs} epochs, grace {scheduler.grace_period}, reduction {scheduler.reduction_factor}"
         if scheduler.kind == "asha" else f"no early stopping: every trial trains {scheduler.max_epochs} epochs"),
        f"resources    {resources.cpus_per_trial} CPU + {resources.gpus_per_trial} GPU per trial",
        f"cluster      {args.address or 'local'}",
        f"then         {'retrain on train + val, evaluate on test, report' if experiment.run.retrain else 'stop (no retraining)'}",
    ]
    return "\n".join(lines)


def prepare_index(experiment: Experiment, resume: bool) -> pd.DataFrame:
    """Index the dataset once per run; a resumed run reuses its table so the split cannot change."""
    path = experiment.run_dir / DATASET_FILE
    if resume and path.is_file():
        return load_index(path)
    print(f"indexing the dataset ({experiment.settings.data.format}) ...", flush=True)
    index = index_dataset(experiment.settings.data)
    save_index(index, path)
    counts = index["split"].value_counts().to_dict()
    print(f"indexed {len(index)} images, {index['label'].nunique()} classes: {counts} -> {path}", flush=True)
    return index


def prepare_image_store(experiment: Experiment, index: pd.DataFrame) -> str | None:
    """Decode every image once before the trials (see `carclf.data.store`), unless turned off."""
    data = experiment.settings.data
    if not data.decode_once:
        return None
    print(f"decoding {len(index)} images once at {data.image_size} px ...", flush=True)
    return str(build_image_store(index, data, data.cache_dir or None))


def start_ray(args: argparse.Namespace) -> None:
    """Start a local cluster with the dashboard on `--dashboard-host`, or join `--address`."""
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}}
    if args.address:
        context = ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        context = ray.init(num_cpus=args.num_cpus, include_dashboard=True, dashboard_host=args.dashboard_host,
                           runtime_env=runtime_env, log_to_driver=False)
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
            f"each trial asks for {resources.gpus_per_trial} GPU but no node of this Ray cluster has "
            f"{'any GPU' if most_gpus == 0 else f'more than {most_gpus}'}; run on CPU with --gpus-per-trial 0 "
            "(or --set resources.gpus_per_trial=0)"
        )
    if resources.cpus_per_trial > most_cpus:
        raise SearchError(f"each trial asks for {resources.cpus_per_trial} CPUs but the largest node has {most_cpus}; "
                          "lower --cpus-per-trial")


def can_train_head_only(experiment: Experiment) -> bool:
    """Whether some trial may have unfreeze depth 0 (so cached frozen features would serve it)."""
    spec = experiment.search.space.get("unfreeze_depth")
    if spec is None:
        return experiment.settings.train.unfreeze_depth == 0
    kind, args = next(iter(spec.items()))
    return 0 in args if kind == "choice" else args[0] <= 0


def prepare_head_features(experiment: Experiment, index: pd.DataFrame, image_store: str | None) -> str | None:
    """Compute frozen features once, as a Ray task with a trial's resources (a GPU where trials get one)."""
    views = experiment.settings.train.feature_views
    if views == 0 or not can_train_head_only(experiment):
        return None
    resources = experiment.resources
    print(f"computing frozen backbone features once ({views} augmented views) for head-only trials ...", flush=True)
    task = ray.remote(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)(build_head_features)
    path = task.remote(index, experiment.trial_settings(), views, experiment.settings.data.cache_dir or None, image_store,
                       max(1, int(resources.cpus_per_trial)))
    return str(ray.get(path))


def make_trainable(experiment: Experiment, index: pd.DataFrame, image_store: str | None, head_features: str | None):
    resources = {"cpu": experiment.resources.cpus_per_trial, "gpu": experiment.resources.gpus_per_trial}
    trainable = tune.with_parameters(train_car_classifier, index=index, settings=experiment.trial_settings(),
                                     image_store=image_store, head_features=head_features)
    return tune.with_resources(trainable, resources)


def make_tuner(experiment: Experiment, index: pd.DataFrame, resume: bool, image_store: str | None = None,
               head_features: str | None = None):
    """The `Tuner`: OptunaSearch (seeded TPE) or random search behind a concurrency limit, ASHA on the epoch."""
    trainable = make_trainable(experiment, index, image_store, head_features)
    run_dir = experiment.run_dir
    if resume:
        return tune.Tuner.restore(str(run_dir), trainable=trainable, resume_errored=True)
    search = experiment.search
    if search.algorithm == "optuna":
        searcher = OptunaSearch(points_to_evaluate=list(search.start) or None, seed=search.seed)
    else:
        searcher = BasicVariantGenerator(points_to_evaluate=list(search.start) or None, random_state=search.seed)
    if experiment.scheduler.kind == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=experiment.scheduler.max_epochs,
                                  grace_period=experiment.scheduler.grace_period,
                                  reduction_factor=experiment.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space(search.space),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.mode, num_samples=search.num_samples,
            search_alg=searcher, max_concurrent_trials=search.max_concurrent,
            scheduler=scheduler, time_budget_s=search.time_budget_s or None,
        ),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=experiment.run.checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=experiment.run.max_failures),
            verbose=1,
        ),
    )


def trials_table(results, max_epochs: int) -> pd.DataFrame:
    """Every reported row of every trial, with the trial's config, status and whether ASHA stopped it."""
    frames = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:  # failed before its first report: keep one row, so it is counted
            frame = pd.DataFrame({"epoch": pd.array([pd.NA], dtype="Int64")})
        frame = frame[[c for c in frame.columns if not c.startswith("config/")]].copy()
        trial_id = result.metrics.get("trial_id") if result.metrics else Path(result.path).name
        last_epoch = int(frame["epoch"].max()) if frame["epoch"].notna().any() else 0
        frame["trial_id"] = trial_id
        frame["trial_path"] = result.path
        frame["status"] = "error" if result.error else "terminated"
        frame["stopped_early"] = result.error is None and last_epoch < max_epochs
        for key, value in (result.config or {}).items():  # None for a trial interrupted before it started
            frame[f"config/{key}"] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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


def summarize(trials: pd.DataFrame, metric: str, mode: str, top: int = 5) -> str:
    """A short table of the best trials: id, epochs reached, best metric, configuration."""
    rows = top_trials(trials, metric, mode, top)
    if not rows:
        return "no trial reported a result"
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        return f"top {len(rows)} of {trials['trial_id'].nunique()} trials by {metric}:\n{pd.DataFrame(rows).set_index('trial_id')}"


def best_trial(trials: pd.DataFrame, metric: str, mode: str) -> tuple[dict[str, Any], int]:
    """The best trial's configuration and the epochs it reached."""
    best = top_trials(trials, metric, mode, count=1)
    if not best or best[0][metric] is None:
        raise SearchError(f"no trial reported {metric}; see the trial errors above")
    keys = [column.removeprefix("config/") for column in trials.columns if column.startswith("config/")]
    return {key: best[0][key] for key in keys}, int(best[0]["epochs"])


def run_search(experiment: Experiment, args: argparse.Namespace) -> Path:
    """The whole job; returns the run folder."""
    run_dir = experiment.run_dir
    started = time.time()
    if not args.resume and tune.Tuner.can_restore(str(run_dir)):
        raise SearchError(f"{run_dir}: a run with this name exists; pass --resume to continue it, or another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / EXPERIMENT_FILE, experiment.to_dict())
    index = prepare_index(experiment, args.resume)
    start_ray(args)
    try:
        check_cluster_resources(experiment)  # before any long preparation: a search must fail at once
        image_store = prepare_image_store(experiment, index)
        head_features = prepare_head_features(experiment, index, image_store)
        fit_started = time.time()
        results = make_tuner(experiment, index, args.resume, image_store, head_features).fit()
        trials = trials_table(results, experiment.scheduler.max_epochs)
        with atomic_path(run_dir / TRIALS_FILE) as partial:
            trials.to_parquet(partial, index=False)
        if search_interrupted(experiment, time.time() - fit_started):
            raise SearchError(f"the search was interrupted; continue it with: python -m tuning.search --resume "
                              f"--experiment {args.experiment} --storage-path {run_dir.parent} --name {run_dir.name}")
        print(summarize(trials, experiment.search.metric, experiment.search.mode), flush=True)
        write_json(run_dir / "search.json", {"wall_time_s": time.time() - started, "finished": time.time()})
        if not experiment.run.retrain:
            return run_dir
        config, epochs = best_trial(trials, experiment.search.metric, experiment.search.mode)
        resources = experiment.resources
        retrain = ray.remote(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)(retrain_and_evaluate)
        print(f"retraining the best configuration for {epochs} epoch(s) on train + val: {config}", flush=True)
        metrics = ray.get(retrain.remote(index, experiment.settings, config, epochs, run_dir / "best",
                                         max(1, int(resources.cpus_per_trial)), image_store))
    finally:
        ray.shutdown()
    write_report(run_dir)
    test = metrics["test"]
    if test.get("labeled"):
        print(f"test accuracy {test['accuracy']:.4f}, top-5 {test['top5_accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} "
              f"on {test['count']} images", flush=True)
    else:
        print(test.get("note", "no test metrics"), flush=True)
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Checkpointing every epoch is the design; Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        experiment = resolve_experiment(args)
        print(describe_plan(experiment, args), flush=True)
        if not args.address and args.dashboard_host not in LOOPBACK:
            logger.warning("the Ray dashboard will listen on %s: it has no authentication, and anyone who reaches it "
                           "can run code on this machine; prefer an SSH tunnel to 127.0.0.1", args.dashboard_host)
        if args.dry_run:
            print("dry run: the experiment is valid; nothing was started")
            return 0
        run_dir = run_search(experiment, args)
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except (ConfigError, DatasetError, ImageDecodeError, WeightsError, SearchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    produced = "best/model.keras, trials.parquet, report.html, report.json" if experiment.run.retrain else "trials.parquet"
    print(f"done: results in {run_dir} ({produced})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
