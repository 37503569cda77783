"""report.json: a run's numbers, from the files the search wrote into its folder.

`read_run` reads those files once (`RunFiles`); `report_numbers` makes report.json of them, and
`tuning.report_figures` the figures of the same files. A damaged file is a `RunFolderError` naming it.

report.json schema (version 6):
  schema_version: 6
  experiment: the experiment document (tables data, model, train, search, scheduler, resources, run)
  dataset: {classes, rows_by_split: {train, val, test}}
  search: {trials, finished, stopped_early, diverged, failed, interrupted, never_started, wall_time_s, metric, mode,
           validation_size, selection, sampler, useful_fraction, trials_s}; stopped_early counts ASHA's stops only;
           useful_fraction: training-step seconds over the trials phase's wall time times its trial slots
           (tuning.trials.useful_fraction), null for a run that did not record it
  early_stopping: {stopped, stopped_within_noise, spared} from rungs.jsonl (stops of trials within 1.96 combined
                  standard errors of the rung's cut; trials below the cut that went on because they were within
                  scheduler.noise_z of it), or null without ASHA
  against_start: {trial_id, start_trial_id, gain, standard_error, within_noise, statement} the best trial against the
                 first [[search.start]] trial, or null when the search had no start point
  transfer: the transfer probe (carclf.probe.TransferProbe as a dict), or null for random weights
  top_trials: [{trial_id, best_<metric>, standard_error, best_epoch, epochs, status, precision, <hyperparameter>: value, ...}]
              best first; best_<metric> is the trial's best epoch's value (the selection rule), named as in
              trials.parquet, where <metric> is each epoch's own value (version 3 called it <metric>)
  within_noise: trial ids of top trials whose score is within 1.96 standard errors of the best's
  parameter_importance: {hyperparameter: importance 0..1} (Optuna fANOVA on the trials' scores; {} below
                        IMPORTANCE_MIN_TRIALS scored trials)
  parameter_importance_note: how far to trust it
  best: {hyperparameters, retrain_epochs, precision, delivered ("retrained" or "trial": the winning trial's own model),
         reason (why, in plain words), trial {trial_id, metric, score, best_epoch}, reproduction (tuning.deliver's check:
         {images, trial_accuracy, retrained_accuracy, difference, standard_error, verdict, statement}, null when not run),
         test: carclf.evaluate metrics (loss, accuracy, top5_accuracy, macro_precision, macro_recall, macro_f1,
         per_class [...], most_confused [...]), start: the first [[search.start]] configuration's trial delivered the same
         way (its delivered, reason, reproduction and trial, test_accuracy, gain: the winner's test accuracy minus the
         start's, standard_error (paired), statement), null when the start won, did not score or no test split is
         labeled} or null (version 6 added delivered, reason, trial, reproduction and start)
  worst_classes: the 20 classes with the lowest test accuracy [{class_name, accuracy, support, ...}]
  advice: [{key, advice}] what to change for the next run, each naming one experiment key (tuning.advice; version 5)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from carclf.data.table import class_names
from carclf.files import plain_value, read_json
from carclf.model_folder import ModelFolder
from tuning.advice import advise
from tuning.experiment import Experiment, experiment_from_document
from tuning.run_folder import RunFolder, read_run_file
from tuning.search_space import SearchSpace
from tuning.study_storage import quiet_study
from tuning.trials import STATUSES, Selection, against_start, top_trials, trial_summaries, within_noise

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 6
IMPORTANCE_MIN_TRIALS = 10  # fewer scored trials: importances are withheld
IMPORTANCE_RELIABLE_TRIALS = 30  # fewer: shown, marked unreliable
SELECTION_RULE = ("each trial is scored by its best epoch's {metric}; that score ranks the trials, Optuna learns it, "
                  "ASHA compares it, and the winner's model is delivered at that epoch count")
WORST_CLASSES = 20



@dataclass(frozen=True)
class RunFiles:
    """What the report reads from a run folder; `best_*` are None for a run that delivered no model."""

    run_dir: Path
    document: dict[str, Any]  # experiment.json as saved (report.json repeats it)
    experiment: Experiment  # the same, parsed as --resume parses it
    index: pd.DataFrame
    trials: pd.DataFrame
    search_info: dict[str, Any]  # search.json; {} for a run that did not write it
    best_metrics: dict[str, Any] | None
    best_config: dict[str, Any] | None
    best_predictions: pd.DataFrame | None

    @property
    def selection(self) -> Selection:
        return Selection.of(self.experiment.search)

    @property
    def class_names(self) -> list[str]:
        return class_names(self.index)


def read_run(run_dir: str | Path) -> RunFiles:
    """Read the run folder's files, each damaged one a `RunFolderError` naming it."""
    folder = RunFolder(Path(run_dir))
    document = folder.read_experiment().document
    retrained = folder.metrics_file.is_file()
    predictions = folder.predictions_file
    return RunFiles(
        run_dir=folder.path, document=document,
        experiment=read_run_file(folder.experiment_file, lambda path: experiment_from_document(document, str(path))),
        index=folder.read_dataset(),
        trials=folder.read_trials(),
        search_info=read_run_file(folder.search_file, read_json) if folder.search_file.is_file() else {},
        best_metrics=read_run_file(folder.metrics_file, read_json) if retrained else None,
        best_config=read_run_file(ModelFolder(folder.best).config_file, read_json) if retrained else None,
        best_predictions=read_run_file(predictions, pd.read_parquet) if retrained and predictions.is_file() else None,
    )


def report_numbers(run: RunFiles) -> dict[str, Any]:
    """report.json (the schema above)."""
    trials, index, search_info, selection = run.trials, run.index, run.search_info, run.selection
    validation_size = int((index["split"] == "val").sum())
    statuses = trials.groupby("trial_id")["status"].first().value_counts()
    top = top_trials(trials, selection, validation_size=validation_size)
    scored = int(np.isfinite(trial_summaries(trials, selection)[selection.objective].astype(float)).sum())
    numbers: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": run.document,
        "dataset": {"classes": len(run.class_names), "rows_by_split": {k: int(v) for k, v in index["split"].value_counts().items()}},
        "search": {"trials": int(statuses.sum()), **{status.replace(" ", "_"): int(statuses.get(status, 0)) for status in STATUSES},
                   "wall_time_s": search_info.get("wall_time_s"), "metric": selection.metric, "mode": selection.mode,
                   "validation_size": validation_size, "selection": SELECTION_RULE.format(metric=selection.metric),
                   "sampler": search_info.get("sampler"), "useful_fraction": search_info.get("useful_fraction"),
                   "trials_s": search_info.get("trials_s")},
        "early_stopping": early_stopping_summary(run.run_dir),
        "against_start": against_start(trials, run.experiment.search.start, selection, validation_size),
        "transfer": search_info.get("transfer"),
        "top_trials": top,
        "within_noise": within_noise(top, selection.objective),
        "parameter_importance": parameter_importance(trials, run.experiment.search.space, selection),
        "parameter_importance_note": importance_note(scored),
        "best": None,
        "worst_classes": [],
    }
    if run.best_metrics is not None:
        test = {key: value for key, value in run.best_metrics["test"].items() if key != "confusion_matrix"}  # a figure
        delivery = {key: run.best_metrics.get(key) for key in ("delivered", "reason", "trial", "reproduction")}
        start = run.best_metrics.get("start")
        delivery["start"] = {key: start.get(key) for key in (*delivery, "test_accuracy", "gain", "standard_error", "statement")} if start else None
        numbers["best"] = {"hyperparameters": run.best_config["hyperparameters"], "retrain_epochs": run.best_metrics["retrain_epochs"],
                           "precision": run.best_config.get("precision"), **delivery, "test": test}
        if test.get("labeled"):
            numbers["worst_classes"] = sorted(test["per_class"], key=lambda c: (c["accuracy"], -c["support"]))[:WORST_CLASSES]
    numbers["advice"] = advise(numbers, run.experiment)
    return numbers


def parameter_importance(trials: pd.DataFrame, space: SearchSpace, selection: Selection) -> dict[str, float]:
    """Optuna's fANOVA importances from a study rebuilt from each trial's score (the selection rule)."""
    study = quiet_study(study_name="report-parameter-importance", direction="maximize" if selection.mode == "max" else "minimize")
    distributions = space.optuna_distributions()
    for _, row in trial_summaries(trials, selection).iterrows():
        params = {key: plain_value(row.get(key)) for key in space}
        if any(value is None for value in params.values()) or not np.isfinite(float(row[selection.objective])):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[selection.objective])))
    if len(study.trials) < IMPORTANCE_MIN_TRIALS:
        return {}
    try:
        return {key: float(value) for key, value in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as error:  # e.g. every trial scored the same
        logger.info("no parameter importances: %s", error)
        return {}


def importance_note(scored: int) -> str:
    """How far to trust fANOVA importances from `scored` trials."""
    if scored < IMPORTANCE_MIN_TRIALS:
        return f"withheld: {scored} scored trials, fewer than {IMPORTANCE_MIN_TRIALS}, cannot separate the hyperparameters' effects"
    if scored < IMPORTANCE_RELIABLE_TRIALS:
        return (f"unreliable: from {scored} scored trials (fewer than {IMPORTANCE_RELIABLE_TRIALS}); trials stopped early are "
                "scored on shorter training, which can make the hyperparameters that decided their stopping look important")
    return f"from {scored} scored trials"


def early_stopping_summary(run_dir: Path) -> dict[str, int] | None:
    """ASHA's decisions from `rungs.jsonl`: stops, stops within noise of the cut, and trials spared by the noise margin."""
    decisions = RunFolder(run_dir).read_rung_decisions()
    if not decisions:
        return None
    stopped = [d for d in decisions if d["decision"] == "stopped"]
    return {"stopped": len(stopped), "stopped_within_noise": sum(bool(d["within_noise"]) for d in stopped),
            "spared": sum(d["decision"] == "spared" for d in decisions)}
