"""`python -m tuning.search`: from an experiment file to the best model and its report.

The run, in the order this module calls it: which run the command means (`tuning.resume`), the
plan (`tuning.plan`), the dataset indexed and decoded once before Ray starts (`tuning.prepare`;
every checkable mistake stops the run here, and `--dry-run` stops after it), the cluster
(`tuning.cluster`), the backbone weights, the transfer probe and the cached head features as
whole-node tasks (`tuning.driver_tasks`), the trials (`tuning.tuner`: Optuna with ASHA), every
reported epoch in `trials.parquet`, then the model delivered (the winner retrained on train +
validation like its trial, or the trial's own model) and evaluated on the test split
(`tuning.deliver`) and the report (`tuning.report`). Every file
it writes is named by `tuning.run_folder`. With no arguments it runs the demo.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from tuning.experiment import DEMO_EXPERIMENT


def cpu_count(text: str) -> int:
    """`--num-cpus`: a whole number of CPUs, at least one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the CPUs of the local Ray cluster), got {value}")
    return value


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
    parser.add_argument("--num-cpus", type=cpu_count, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", help="bind the local dashboard here (default 127.0.0.1)")
    parser.add_argument("--no-dashboard", action="store_true", help="start the local cluster without Ray's dashboard")
    parser.add_argument("--storage-path", help="where runs are stored (run.storage_path)")
    parser.add_argument("--name", help="run name (run.name; default: the experiment file's name)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                        help="continue an interrupted run as it was saved: the run named by the other flags, or RUN_DIR")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the search (no retraining, evaluation or report)")
    parser.add_argument("--dry-run", action="store_true", help="check everything (data, images, weights) and print the plan; start nothing")
    parser.add_argument("--ray-verbose", type=int, choices=(0, 1, 2, 3), default=0,
                        help="Ray Tune's own console output: 0 (default) one line per trial event (tuning.console); "
                             "1 adds Ray's status and per-trial result tables; 2 and 3 more")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any experiment value, e.g. --set train.momentum=0.8 (repeatable)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and argument errors answer here, before the imports below load Ray, Keras and TensorFlow

import pandas as pd  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

from carclf.files import require_free_space, write_json  # noqa: E402
from carclf.runtime import module_installed  # noqa: E402
from tuning.cluster import (  # noqa: E402
    check_cluster_resources,
    check_local_cluster,
    nodes_not_seeing,
    require_seen,
    start_ray,
    trial_slots,
    warn_if_exposed,
)
from tuning.deliver import deliver_model  # noqa: E402
from tuning.driver_tasks import prepare_head_features, resolve_backbone, transfer_probe, whole_node  # noqa: E402
from tuning.errors import EXPECTED_ERRORS, SearchError  # noqa: E402
from tuning.experiment import Experiment  # noqa: E402
from tuning.plan import describe_plan, describe_weights, summarize, warnings_for  # noqa: E402
from tuning.prepare import Prepared, prepare  # noqa: E402
from tuning.report import write_report  # noqa: E402
from tuning.resume import check_new_run, resolve_experiment, resolved_values  # noqa: E402
from tuning.run_folder import new_run_id  # noqa: E402
from tuning.run_storage import RunPlace  # noqa: E402
from tuning.samplers import choose_sampler  # noqa: E402
from tuning.search_state import export_search_state, read_search_state  # noqa: E402
from tuning.shipping import Shipment, on_node, returned, weights_entry  # noqa: E402
from tuning.study_storage import StudyPlace, check_usable  # noqa: E402
from tuning.trials import Selection, best_trial, start_trial, trials_table, useful_fraction  # noqa: E402
from tuning.tuner import make_tuner, search_interrupted  # noqa: E402

logger = logging.getLogger("tuning.search")
LOW_DISK_BYTES = 50 * 2**20
CHECKPOINT_BYTES = 320 * 2**20  # ResNet50's weights and momentum (239 MB measured at depth 16) and its best epoch's weights (94 MB)


def run_search(experiment: Experiment, prepared: Prepared, args: argparse.Namespace) -> Path:
    """The trials, then the delivered model, its evaluation and the report; returns the run folder."""
    place, resume, started = experiment.run_place, args.resume is not None, time.time()
    folder = place.folder
    kept = experiment.search.max_concurrent * experiment.run.checkpoints_to_keep + 1  # + the best model
    require_free_space(folder.path, kept * CHECKPOINT_BYTES, f"{kept - 1} trial checkpoint(s) and the best model")
    if not resume:
        folder.write_start(prepared.index)
    start_ray(args, experiment)
    try:
        check_cluster_resources(experiment)  # before any long preparation: a search must fail at once
        cache = {"data.cache_dir": Path(experiment.settings.data.cache_dir)}
        unseen = nodes_not_seeing(cache if place.uri else {**cache, "run.storage_path": folder.path})
        if place.uri is None:  # on object storage the run reaches every node through Ray and the URI (tuning.run_storage)
            require_seen("run.storage_path", folder.path, unseen["run.storage_path"])
        shipment = Shipment.to_nodes(needed=bool(unseen["data.cache_dir"]))  # the cache, through Ray to nodes that lack it
        backbone_started = time.time()
        resolved = resolve_backbone(prepared.experiment, shipment)  # what the trials run with, and what experiment.json records
        backbone_s = time.time() - backbone_started
        inputs = shipment.adding([Path(prepared.store).parent, weights_entry(resolved.settings.model.weights)])
        run_id = folder.read_experiment().run_id if resume else new_run_id()
        if not resume:
            folder.write_experiment(resolved.to_dict(), resolved_values(resolved, experiment), run_id)
            place.push()
        if folder.stage() != "searched":
            search_trials(resolved, prepared, inputs, place, run_id, resume, started, backbone_s, args.ray_verbose)
        trials = folder.read_trials()
        print(summarize(trials, resolved, prepared.validation_size), flush=True)
        if resolved.run.delivery == "none":
            folder.mark("finished")
            place.push()
            return folder.path
        metrics = deliver_best(resolved, prepared, inputs, place, trials)
    finally:
        ray.shutdown()
    advice = write_report(folder.path)[2]["advice"]
    folder.mark("finished")
    place.push()
    print(f"delivered: {metrics['reason']}", flush=True)
    test = metrics["test"]
    if test.get("labeled"):
        print(f"test accuracy {test['accuracy']:.4f}, top-5 {test['top5_accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} "
              f"on {test['count']} images", flush=True)
    else:
        print(test.get("note", "no test metrics"), flush=True)
    if "start" in metrics:
        print(f"the starting configuration's model tests {metrics['start']['test_accuracy']:.4f}: {metrics['start']['statement']}",
              flush=True)
    if advice:
        print("for the next run:\n" + "\n".join(f"  {item['key']}: {item['advice']}" for item in advice), flush=True)
    return folder.path


def search_trials(experiment: Experiment, prepared: Prepared, inputs: Shipment, place: RunPlace, run_id: str | None, resume: bool,
                  started: float, backbone_s: float, ray_verbose: int = 0) -> None:
    """The transfer probe, the head features and the trials; every reported epoch lands in `trials.parquet`.
    `search.json` times them, from `started` (the cluster's start), with the `backbone_s` that resolving the
    weights took (building carclf's synthetic backbone on a first run, fetching ImageNet's)."""
    features_started = time.time()
    transfer = transfer_probe(experiment, prepared.index, prepared.store, inputs)
    features = prepare_head_features(experiment, prepared.index, prepared.store, inputs)
    fit_started, folder = time.time(), place.folder
    restore = resume and tune.Tuner.can_restore(str(folder.ray_dir))  # the mirror of a run on object storage holds Ray's files too
    shipment = inputs.adding([Path(features) if features else None])
    results = make_tuner(experiment, prepared, features, shipment, run_id, restore, ray_verbose).fit()
    place.pull()  # on object storage, what Ray saved there: the searcher's state, the trials' results
    state = read_search_state(folder.ray_dir)  # the newest Ray saved, as the trials stopped: the study and rungs.jsonl from it
    if state is not None:
        study_place = StudyPlace(folder.path, experiment.search.storage)
        name = export_search_state(study_place, state, experiment.search.space.optuna_distributions())
        logger.info("the study %r is written; to see it: %s", name, study_place.dashboard_command)
    stopped = {d["trial_id"] for d in folder.read_rung_decisions() if d["decision"] == "stopped"}
    trials = trials_table(results, experiment.scheduler.max_epochs, stopped)
    folder.write_trials(trials)
    trials_s = time.time() - fit_started
    if search_interrupted(experiment, trials_s):
        place.push()
        raise SearchError(f"the search was interrupted; continue it with: python -m tuning.search --resume {place.where}")
    write_json(folder.search_file, {"wall_time_s": time.time() - started, "finished": time.time(),
                                    "validation_size": prepared.validation_size, "prepare_s": prepared.seconds,
                                    "backbone_s": backbone_s, "features_s": fit_started - features_started, "trials_s": trials_s,
                                    "useful_fraction": useful_fraction(trials, trials_s, trial_slots(experiment)),
                                    "sampler": choose_sampler(experiment.search.algorithm, experiment.search.num_samples)[0],
                                    "transfer": transfer})
    folder.mark("searched")
    place.push()


def deliver_best(experiment: Experiment, prepared: Prepared, inputs: Shipment, place: RunPlace, trials: pd.DataFrame) -> dict:
    """The winner's model, as `run.retrain` chooses (`tuning.deliver`), made and tested as a whole-node task, with the
    starting configuration's delivered the same way beside it; its `metrics.json`. A retraining's head epochs train on
    the search's cached features (reused, or rebuilt if the cache lost them). The trials' final checkpoints and the
    features go to the node with the shipment, and `best/` comes back to the driver from wherever the task ran (`tuning.shipping`)."""
    selection, space, folder = Selection.of(experiment.search), list(experiment.search.space), place.folder
    best = best_trial(trials, selection, space)
    if best is None:
        errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=str)
        cause = f"; the first trial's error: {errors.iloc[0]}" if len(errors) else ""
        raise SearchError(f"no trial scored {selection.metric} (see {folder.trials_file}){cause}")
    start = start_trial(trials, experiment.search.start, selection, space)
    if experiment.run.delivery == "train+val":
        also = f", then the starting configuration's (trial {start.trial_id}) the same way" if start and start != best else ""
        print(f"retraining the best trial ({best.trial_id}) on train + val as it trained, for its best epoch count "
              f"({best.best_epoch}): {best.hyperparameters}{also}", flush=True)
    features = prepare_head_features(experiment, prepared.index, prepared.store, inputs) if experiment.run.delivery == "train+val" else None
    options = whole_node(experiment)
    task = ray.remote(**options)(on_node)
    checkpoints = inputs.adding([place.pull_checkpoint(name) for name in {trial.folder_name for trial in (best, start) if trial}]
                                + [Path(features) if features else None])
    return returned(ray.get(task.remote(deliver_model, checkpoints, folder.best, prepared.index, prepared.store,
                                        experiment.settings, best, experiment.run.delivery, folder, selection.metric,
                                        options["num_cpus"], start, features)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = folder = None
    try:
        experiment = resolve_experiment(args)
        place = experiment.run_place
        folder, run_dir = place.folder, place.where
        print(describe_plan(experiment, args), flush=True)
        warn_if_exposed(args)
        if args.dry_run:
            check_local_cluster(args, experiment)
            prepared = prepare(experiment, resume=False)
            check_usable(StudyPlace(experiment.run_dir, experiment.search.storage))
            place.check()
            print(f"weights      {describe_weights(experiment)}")
            print(f"epochs       {prepared.experiment.settings.train.epoch_images} training images each, at every batch size")
            for note in warnings_for(prepared):
                print(f"warning: {note}")
            print("dry run: the experiment, the data, the weights, the study's storage and the run's are valid; nothing was started")
            return 0
        with place.hold():
            if args.resume is None:
                place.pull(fresh=True)  # on object storage: what the URI holds under this name, which check_new_run reads
            if args.resume is not None and folder.stage() == "finished":
                print(f"{run_dir}: this run is finished; nothing to do (its report is {folder.report_html.name} there)")
                return 0
            if args.resume is None:
                check_new_run(experiment)
            else:
                folder.require_files()
            prepared = prepare(experiment, resume=args.resume is not None)
            describe_weights(experiment)
            for note in warnings_for(prepared):
                logger.warning(note)
            run_search(experiment, prepared, args)
    except KeyboardInterrupt:
        print(f"error: interrupted; continue with: python -m tuning.search --resume {run_dir or ''}".rstrip(), file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or run_dir}: {error.strerror or error}", file=sys.stderr)
        return 2
    except Exception:
        if folder is not None and folder.path.parent.exists() and shutil.disk_usage(folder.path.parent).free < LOW_DISK_BYTES:
            print(f"error: {run_dir}: no space left on the device (free some, then continue with --resume {run_dir})", file=sys.stderr)
            return 2
        raise
    print(f"done: results in {run_dir} ("
          + ("best/model.keras, trials.parquet, report.html, report.json" if experiment.run.delivery != "none" else "trials.parquet") + ")")
    viewer = "" if module_installed("tensorboard") else " (pip install -e \".[viz]\" first)"
    print(f"every trial's curves: tensorboard --logdir {run_dir}{viewer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
