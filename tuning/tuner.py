"""The Ray Tune `Tuner` of a search: the trainable with its resources, Optuna behind a concurrency limit, ASHA.

A new search builds it from the experiment; a resumed one is restored by Ray from the run folder,
with the study and ASHA's decisions from the searcher's saved state (`tuning.search_state`).
"""

from __future__ import annotations

import os

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.console import TrialEvents
from tuning.experiment import Experiment
from tuning.prepare import Prepared
from tuning.run_folder import RAY_FOLDER
from tuning.samplers import choose_sampler
from tuning.scheduler import NoiseAwareASHA
from tuning.search_state import RungLog, experiment_fingerprint
from tuning.searcher import StudySearcher
from tuning.shipping import Shipment
from tuning.trainable import CarClassifierTrainable
from tuning.trials import Selection


def make_tuner(experiment: Experiment, prepared: Prepared, features: str | None, shipment: Shipment, run_id: str | None,
               resume: bool, ray_verbose: int = 0) -> tune.Tuner:
    """The `Tuner`: carclf's Optuna searcher behind a concurrency limit, ASHA on final-phase epochs, sharing one rung log,
    which the console's trial events read (`tuning.console`); Ray's own tables at `ray_verbose` 1 and above.

    A resumed search is restored by Ray from the run folder (or the URI of a run on object storage), wherever it is now: the searcher and the
    scheduler come back from Ray's saved state (`tuning.search_state`), the trials from their checkpoints.
    `shipment` carries the store, the features and the weights to nodes that do not share the driver's disk.
    """
    search, place = experiment.search, experiment.run_place
    if ray_verbose == 0:  # Ray's newer console prints its banner and a TensorBoard hint at a temporary folder even when silent
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Trials checkpoint every epoch, so Ray snapshots the experiment (the searcher's state with it) each time and warns
        # that snapshots come often; on the demo one took 0.008 s. Its own switch (named in the warning) silences it.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    selection = Selection.of(experiment.search)
    trainable = tune.with_parameters(CarClassifierTrainable, index=prepared.index, settings=experiment.trial_settings(),
                                     store=str(prepared.store), features=features, selection=selection,
                                     checkpoint_minutes=experiment.run.checkpoint_minutes, shipment=shipment)
    trainable = tune.with_resources(trainable, {"cpu": experiment.resources.cpus_per_trial, "gpu": experiment.resources.gpus_per_trial})
    if resume:
        return tune.Tuner.restore(place.ray_where, trainable=trainable, resume_errored=True)
    searcher, scheduler, rung_log = make_search(experiment, prepared.validation_size, run_id)
    events = TrialEvents(selection, list(search.space), rung_log)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=selection.objective, mode=selection.mode, num_samples=search.num_samples,
            search_alg=searcher, max_concurrent_trials=search.max_concurrent,
            scheduler=scheduler, time_budget_s=search.time_budget_s or None, reuse_actors=experiment.run.reuse_workers,
        ),
        run_config=tune.RunConfig(
            name=RAY_FOLDER, storage_path=place.where,  # in the run's folder, or its URI (tuning.run_storage)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=experiment.run.checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=experiment.run.max_failures),
            callbacks=[events], verbose=ray_verbose,
        ),
    )


def make_search(experiment: Experiment, validation_size: int, run_id: str | None) -> tuple[StudySearcher, TrialScheduler, RungLog | None]:
    """A new search's searcher and scheduler, sharing one rung log (None without early stopping): what `make_tuner`
    gives Ray Tune, and what `benchmarks/replay.py` drives on recorded learning curves."""
    search, asha, selection = experiment.search, experiment.scheduler, Selection.of(experiment.search)
    rung_log, document = RungLog(), experiment.to_dict()
    searcher = StudySearcher(search.space, metric=selection.objective, mode=selection.mode, max_epochs=asha.max_epochs,
                             sampler=choose_sampler(search.algorithm, search.num_samples)[0], startup_trials=search.optuna_startup_trials,
                             parallel=search.max_concurrent > 1, seed=search.seed, start=search.start,
                             identity={"fingerprint": experiment_fingerprint(document), "source": document["source"], "run_id": run_id},
                             rung_log=rung_log, stopped_trials=search.stopped_trials)
    if asha.kind != "asha":
        return searcher, FIFOScheduler(), None
    scheduler = NoiseAwareASHA(score_metric=selection.metric, max_epochs=asha.max_epochs, grace_period=asha.grace_period,
                               reduction_factor=asha.reduction_factor, validation_size=validation_size,
                               noise_z=asha.noise_z, rung_log=rung_log, run_id=run_id)
    return searcher, scheduler, rung_log


def search_interrupted(experiment: Experiment, elapsed_s: float) -> bool:
    """True when trials are still pending or paused, or samples were never started (and no budget ran out).

    Read from the run's saved experiment state, because after a SIGINT Ray returns normally with
    the trials it had created so far.
    """
    statuses = [trial.status for trial in tune.ExperimentAnalysis(str(experiment.run_place.folder.ray_dir)).trials]
    if any(status not in ("TERMINATED", "ERROR") for status in statuses):
        return True
    budget = experiment.search.time_budget_s
    return len(statuses) < experiment.search.num_samples and not (budget and elapsed_s >= budget)
