"""What the search says to its user: the plan before it starts, warnings, and the best trials after.

`--dry-run` prints the plan and the warnings and stops; a real run prints the same plan, so a
user can compare what ran with what was asked.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import keras
import pandas as pd

from carclf.pretrained import synthetic_backbone_path
from carclf.weights import IMAGENET_URL, check_weights_file, imagenet_cache_file
from tuning.experiment import Experiment
from tuning.prepare import Prepared
from tuning.samplers import choose_sampler
from tuning.scheduler import rung_milestones
from tuning.trials import Selection, against_start, has_standard_error, top_trials, within_noise

SMALL_VALIDATION = 200


THEN = {  # what the plan says follows the trials, for each run.retrain (tuning.deliver)
    "train+val": "retrain the winner on train + val as its trial trained, check it against the trial's model, evaluate on test, report",
    "trial": "deliver the winning trial's own model, evaluate it on test, report",
    "none": "stop (no model delivered)",
}


def describe_plan(experiment: Experiment, args: argparse.Namespace) -> str:
    search, resources = experiment.search, experiment.resources
    data, train = experiment.settings.data, experiment.settings.train
    sampler, why = choose_sampler(search.algorithm, search.num_samples)
    algorithm = (f"Optuna {sampler.upper()} ({search.optuna_startup_trials} random start-up trials; {why})" if sampler != "random"
                 else f"Optuna random search ({why})")
    lines = [
        f"experiment   {experiment.source}",
        f"run folder   {experiment.run_dir}{' (resuming)' if args.resume is not None else ''}",
        f"data         {data.format} at {data.root or '(synthetic cache)'}, {data.image_size} px, crop to box: {data.crop_to_bbox}",
        f"cache        {data.cache_dir}",
        f"model        ResNet50, weights {experiment.settings.model.weights}, precision {train.precision}, Keras backend {keras.backend.backend()}",
        f"search       {search.num_samples} trials of {algorithm}, seed {search.seed}, {search.max_concurrent} at once, "
        f"{search.direction} {search.metric} (each trial's best epoch)" + (f", budget {search.time_budget_s:.0f} s" if search.time_budget_s else ""),
        f"space        {search.space}",
        f"starts at    {search.start}",
        describe_scheduler(experiment),
        f"resources    {resources.cpus_per_trial} CPU + {resources.gpus_per_trial} GPU per trial",
        f"cluster      {args.address or 'local'}",
        f"then         {THEN[experiment.run.delivery]}",
    ]
    return "\n".join(lines)


def describe_scheduler(experiment: Experiment) -> str:
    """The plan's line on early stopping: the rungs, in epochs of a trial's final phase, and the rule at each."""
    scheduler, metric = experiment.scheduler, experiment.search.metric
    if scheduler.kind != "asha":
        return f"no early stopping: every trial trains {scheduler.max_epochs} epochs"
    warm_up = experiment.warm_up_epochs()
    rungs = rung_milestones(scheduler.grace_period, scheduler.max_epochs, scheduler.reduction_factor)
    if not scheduler.noise_z:
        margin = ""
    elif has_standard_error(metric):
        margin = f" and any trial within {scheduler.noise_z:g} standard errors of the cut"
    else:
        margin = f" (no noise margin: {metric} has no standard error, so the cut alone decides)"
    return (f"ASHA         up to {scheduler.max_epochs} epochs; rungs at {rungs} epochs of a trial's final phase"
            + (f" (after up to {warm_up} head-only warm-up epochs)" if warm_up else "")
            + f", keeping the top 1/{scheduler.reduction_factor:g}{margin}"
            + ("; the sampler is told each stopped trial's estimated final value (search.stopped_trials)"
               if experiment.search.stopped_trials == "estimate" else ""))


def describe_weights(experiment: Experiment) -> str:
    """Where the backbone's weights will come from; a named file must exist and hold ResNet50."""
    settings = experiment.settings
    weights = settings.model.weights
    if not settings.model.pretrained:
        return "random initialisation"
    if weights == "imagenet":
        cached = imagenet_cache_file()
        return f"ImageNet, {'cached at ' + str(cached) if cached.is_file() else 'downloaded once from ' + IMAGENET_URL}"
    if weights == "synthetic":
        path = synthetic_backbone_path(settings)
        return f"carclf's synthetic pretrained backbone, {'cached at ' + str(path) if path.is_file() else 'built once, before the trials'}"
    return f"file {check_weights_file(weights)}"


def warnings_for(prepared: Prepared) -> list[str]:
    """What a user should know before the trials start: noisy validation, a random search, nothing to choose."""
    experiment, notes = prepared.experiment, []
    validation = prepared.validation_size
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
    unjudged = never_judged(experiment)
    if unjudged:
        notes.append(unjudged)
    return notes


def never_judged(experiment: Experiment) -> str | None:
    """Which trials ASHA can never judge, said plainly: a warm-up that leaves fewer fine-tuning epochs than the first
    rung, or no rung at all below max_epochs. None when every trial meets a rung."""
    scheduler = experiment.scheduler
    if scheduler.kind != "asha":
        return None
    rungs = rung_milestones(scheduler.grace_period, scheduler.max_epochs, scheduler.reduction_factor)
    if not rungs:
        return (f"scheduler.grace_period ({scheduler.grace_period}) leaves no rung below scheduler.max_epochs ({scheduler.max_epochs}): "
                "ASHA stops no trial early")
    if not experiment.warm_up_epochs():
        return None
    short = sorted(int(h) for h in experiment.possible_values("head_epochs") if 0 < scheduler.max_epochs - int(h) < rungs[0])
    if not short:
        return None
    return (f"trials with head_epochs {', '.join(map(str, short))} fine-tune for fewer than the first rung's {rungs[0]} epoch(s) "
            f"within scheduler.max_epochs ({scheduler.max_epochs}): ASHA never judges them, so they always train every epoch "
            "(lower head_epochs, or raise max_epochs)")


def summarize(trials: pd.DataFrame, experiment: Experiment, validation_size: int, top: int = 5) -> str:
    """The best trials (best epoch, score and standard error, settings), and which are within noise of the best."""
    selection = Selection.of(experiment.search)
    rows = top_trials(trials, selection, top, validation_size)
    if not rows:
        return "no trial reported a result"
    with pd.option_context("display.width", 180, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        text = (f"top {len(rows)} of {trials['trial_id'].nunique()} trials by {selection.metric} at each trial's best epoch "
                f"({validation_size} validation images):\n{pd.DataFrame(rows).set_index('trial_id')}")
    close = within_noise(rows, selection.objective)
    if close:
        text += f"\nwithin noise of the best (difference < 1.96 standard errors): {', '.join(close)}"
    if experiment.nothing_to_choose():
        text += "\nthe search space has a single point: the search had nothing to choose"
    gain = against_start(trials, experiment.search.start, selection, validation_size)
    if gain:
        text += "\n" + gain["statement"]
    return text
