"""The Ray Tune `Tuner` of a search: the trainable with its resources, Optuna behind a concurrency limit, ASHA.

A new search builds it from the experiment; a resumed one restores it from the run folder, with
the study and ASHA's log found where the folder is now.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import FIFOScheduler

from tuning.experiment import Experiment
from tuning.prepare import Prepared
from tuning.samplers import choose_sampler
from tuning.scheduler import NoiseAwareASHA
from tuning.search_space import param_space
from tuning.searcher import make_searcher, relocate_study
from tuning.trainable import CarClassifierTrainable
from tuning.trials import Selection


def make_tuner(experiment: Experiment, prepared: Prepared, features: str | None, run_id: str | None, resume: bool) -> tune.Tuner:
    """The `Tuner`: an Optuna sampler on `RUN_DIR/study.db` behind a concurrency limit, ASHA on final-phase epochs."""
    search, run_dir = experiment.search, experiment.run_dir
    selection = Selection.of(experiment.search)
    trainable = tune.with_parameters(CarClassifierTrainable, index=prepared.index, settings=experiment.trial_settings(),
                                     store=str(prepared.store), features=features, selection=selection,
                                     checkpoint_minutes=experiment.run.checkpoint_minutes)
    trainable = tune.with_resources(trainable, {"cpu": experiment.resources.cpus_per_trial, "gpu": experiment.resources.gpus_per_trial})
    if resume:
        relocate_study(run_dir)
        NoiseAwareASHA.relocated_run_dir = run_dir
        return tune.Tuner.restore(str(run_dir), trainable=trainable, resume_errored=True)
    searcher = make_searcher(choose_sampler(search.algorithm, search.num_samples)[0], run_dir, experiment.to_dict(), run_id, selection,
                             search.max_concurrent, search.optuna_startup_trials, search.seed, search.start,
                             experiment.scheduler.max_epochs)
    asha = experiment.scheduler
    if asha.kind == "asha":
        scheduler = NoiseAwareASHA(metric=selection.objective, mode=selection.mode, score_metric=selection.metric,
                                   max_epochs=asha.max_epochs, grace_period=asha.grace_period,
                                   reduction_factor=asha.reduction_factor, validation_size=prepared.validation_size,
                                   noise_z=asha.noise_z, run_dir=run_dir, run_id=run_id)
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
