"""The evaluation report of a run: `report.html` (one self-contained file) and `report.json`.

`python -m tuning.report RUN_DIR` regenerates both from the run folder; the search calls the same
`write_report` at its end. Everything is read from the files the search wrote (`experiment.json`,
`dataset.parquet`, `trials.parquet`, `search.json`, `best/*`), so a report can be rebuilt later.

report.json schema (version 3):
  schema_version: 3
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
  top_trials: [{trial_id, <metric>, standard_error, best_epoch, epochs, status, precision, <hyperparameter>: value, ...}]
              best first; <metric> is the trial's best epoch's value (the selection rule)
  within_noise: trial ids of top trials whose score is within 1.96 standard errors of the best's
  parameter_importance: {hyperparameter: importance 0..1} (Optuna fANOVA on the trials' scores; {} below
                        IMPORTANCE_MIN_TRIALS scored trials)
  parameter_importance_note: how far to trust it
  best: {hyperparameters, retrain_epochs, precision, test: carclf.evaluate metrics (loss, accuracy, top5_accuracy,
         macro_precision, macro_recall, macro_f1, per_class [...], most_confused [...])} or null
  worst_classes: the 20 classes with the lowest test accuracy [{class_name, accuracy, support, ...}]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from carclf.data.table import class_names, load_index  # noqa: E402
from carclf.files import plain_value, read_json, write_json, write_text  # noqa: E402
from tuning.experiment import experiment_from_document  # noqa: E402
from tuning.scheduler import read_rung_decisions  # noqa: E402
from tuning.search_space import SearchSpace  # noqa: E402
from tuning.trials import NOISE_Z, STATUSES, Selection, against_start, top_trials, trial_summaries, within_noise  # noqa: E402

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 3
IMPORTANCE_MIN_TRIALS = 10  # fewer scored trials: importances are withheld
IMPORTANCE_RELIABLE_TRIALS = 30  # fewer: shown, marked unreliable
SELECTION_RULE = ("each trial is scored by its best epoch's {metric}; that score ranks the trials, Optuna learns it, "
                  "ASHA compares it, and the winner is retrained for that epoch count")
WORST_CLASSES = 20
CONFUSION_LIMIT = 30
GRID_IMAGES = 24


def _figure_to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_to_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def parameter_importance(trials: pd.DataFrame, space: SearchSpace, selection: Selection) -> dict[str, float]:
    """Optuna's fANOVA importances from a study rebuilt from each trial's score (the selection rule)."""
    # Named, so Optuna's "new study created in memory" line is not mistaken for the run's study.db.
    study = optuna.create_study(study_name="report-parameter-importance", direction="maximize" if selection.mode == "max" else "minimize")
    distributions = {dimension.name: dimension.optuna_distribution() for dimension in space.dimensions}
    for _, row in trial_summaries(trials, selection).iterrows():
        params = {key: plain_value(row.get(key)) for key in space}
        if any(value is None for value in params.values()) or not np.isfinite(float(row["score"])):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row["score"])))
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
    decisions = read_rung_decisions(run_dir)
    if not decisions:
        return None
    stopped = [d for d in decisions if d["decision"] == "stopped"]
    return {"stopped": len(stopped), "stopped_within_noise": sum(bool(d["within_noise"]) for d in stopped),
            "spared": sum(d["decision"] == "spared" for d in decisions)}


DIVERGED_MARKER = {"marker": "D", "color": "black"}  # no trial's colour (Matplotlib's cycle has no black) and not ASHA's ×


def plot_learning_curves(trials: pd.DataFrame, metric: str) -> str:
    return _figure_to_data_uri(learning_curves(trials, metric))


def learning_curves(trials: pd.DataFrame, metric: str) -> plt.Figure:
    """Every trial's `metric` by epoch; × in the trial's colour marks where ASHA stopped it early, a black
    diamond where it diverged (a red × for diverged was confused with the trial drawn in the cycle's red)."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for trial_id, rows in trials.dropna(subset=["epoch"]).groupby("trial_id"):
        rows = rows.sort_values("epoch")
        (line,) = axis.plot(rows["epoch"], rows[metric], marker=".", alpha=0.8, label=str(trial_id))
        end = rows["epoch"].iloc[-1], rows[metric].fillna(0).iloc[-1]
        status = rows["status"].iloc[0]
        if status == "stopped early":
            axis.plot(*end, "x", color=line.get_color(), markersize=11, mew=2.5)
        elif status == "diverged":
            axis.plot(*end, linestyle="none", markersize=9, **DIVERGED_MARKER)
    axis.set_xlabel("epoch (every epoch holds the same number of training images)")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} of every trial (× = stopped early by ASHA, black diamond = diverged)")
    axis.grid(alpha=0.3)
    if trials["trial_id"].nunique() <= 12:
        axis.legend(fontsize=7, ncol=2)
    return figure


def plot_hyperparameters(trials: pd.DataFrame, space: SearchSpace, selection: Selection) -> str:
    """Each hyperparameter against the trial's score (its best epoch's metric)."""
    scores = trial_summaries(trials, selection)
    scores = scores[np.isfinite(scores["score"].astype(float))]
    keys = [k for k in space if k in scores]
    figure, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3), squeeze=False)
    for axis, key in zip(axes[0], keys):
        axis.scatter(scores[key].astype(float), scores["score"].astype(float), alpha=0.8)
        if space.get(key).kind == "loguniform":
            axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.tick_params(axis="x", labelrotation=35, labelsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {selection.metric}")
    return _figure_to_data_uri(figure)


def plot_importance(importance: dict[str, float]) -> str:
    figure, axis = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importance)))
    names = list(importance)[::-1]
    axis.barh(names, [importance[n] for n in names])
    axis.set_xlabel("importance (Optuna fANOVA)")
    return _figure_to_data_uri(figure)


def plot_confusion(matrix: np.ndarray, names: list[str]) -> tuple[str, str]:
    """A heatmap readable at any class count: all classes up to 30, else the 30 most-confused ones."""
    note = "all classes"
    if len(names) > CONFUSION_LIMIT:
        errors = matrix.sum(axis=1) + matrix.sum(axis=0) - 2 * np.diag(matrix)
        keep = np.sort(np.argsort(-errors)[:CONFUSION_LIMIT])
        matrix, names = matrix[np.ix_(keep, keep)], [names[i] for i in keep]
        note = f"the {CONFUSION_LIMIT} classes with the most errors"
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 3 + 0.28 * len(names)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis, fraction=0.04, label="share of the true class")
    return _figure_to_data_uri(figure), note


def prediction_grid(predictions: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    """Up to 24 test images (wrong ones first) as thumbnails with true and predicted names."""
    labeled = predictions.dropna(subset=["label"])
    wrong = labeled[labeled["label"] != labeled["predicted"]]
    right = labeled[labeled["label"] == labeled["predicted"]]
    chosen = pd.concat([wrong.head(GRID_IMAGES // 2), right]).head(GRID_IMAGES) if len(labeled) else predictions.head(GRID_IMAGES)
    cells = []
    for row in chosen.itertuples():
        try:
            with Image.open(row.path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((160, 160))
                uri = _image_to_data_uri(image)
        except OSError as error:
            logger.warning("report: cannot show %s: %s", row.path, error)
            continue
        true = names[int(row.label)] if pd.notna(row.label) else "(unlabeled)"
        cells.append({"uri": uri, "true": true, "predicted": names[int(row.predicted)], "confidence": float(row.confidence),
                      "wrong": pd.notna(row.label) and int(row.label) != int(row.predicted)})
    return cells


class RunFileError(ValueError):
    """A file of the run folder cannot be read."""


def read_run_file(path: Path, reader: Callable[[Path], Any]) -> Any:
    """`reader(path)`, or a `RunFileError` naming the file when it is damaged."""
    try:
        return reader(path)
    except (OSError, ValueError, KeyError) as error:
        raise RunFileError(f"{path}: unreadable ({str(error).splitlines()[0][:200]})") from None


def build_report(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's numbers (report.json) and the figures and extras only the HTML shows."""
    run_dir = Path(run_dir)
    document = read_run_file(run_dir / "experiment.json", read_json)
    experiment = read_run_file(run_dir / "experiment.json", lambda path: experiment_from_document(document, str(path)))
    index = read_run_file(run_dir / "dataset.parquet", load_index)
    trials = read_run_file(run_dir / "trials.parquet", pd.read_parquet)
    search_info = read_run_file(run_dir / "search.json", read_json) if (run_dir / "search.json").is_file() else {}
    search = experiment.search
    selection = Selection(search.metric, search.direction)
    space = search.space
    names = class_names(index)
    validation_size = int((index["split"] == "val").sum())
    statuses = trials.groupby("trial_id")["status"].first().value_counts()
    top = top_trials(trials, selection, validation_size=validation_size)
    scored = int(np.isfinite(trial_summaries(trials, selection)["score"].astype(float)).sum())
    numbers: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": document,
        "dataset": {"classes": len(names), "rows_by_split": {k: int(v) for k, v in index["split"].value_counts().items()}},
        "search": {"trials": int(statuses.sum()), **{status.replace(" ", "_"): int(statuses.get(status, 0)) for status in STATUSES},
                   "wall_time_s": search_info.get("wall_time_s"), "metric": selection.metric, "mode": selection.mode,
                   "validation_size": validation_size, "selection": SELECTION_RULE.format(metric=selection.metric),
                   "sampler": search_info.get("sampler"), "useful_fraction": search_info.get("useful_fraction"),
                   "trials_s": search_info.get("trials_s")},
        "early_stopping": early_stopping_summary(run_dir),
        "against_start": against_start(trials, search.start, selection, validation_size),
        "transfer": search_info.get("transfer"),
        "top_trials": top,
        "within_noise": within_noise(top, selection.metric),
        "parameter_importance": parameter_importance(trials, space, selection),
        "parameter_importance_note": importance_note(scored),
        "best": None,
        "worst_classes": [],
    }
    has_metric = selection.metric in trials
    extras: dict[str, Any] = {"curves": plot_learning_curves(trials, selection.metric) if has_metric else None,
                              "hyperparameters": plot_hyperparameters(trials, space, selection) if has_metric else None}
    if numbers["parameter_importance"]:
        extras["importance"] = plot_importance(numbers["parameter_importance"])
    best_dir = run_dir / "best"
    if (best_dir / "metrics.json").is_file():
        metrics = read_run_file(best_dir / "metrics.json", read_json)
        test = dict(metrics["test"])
        matrix = test.pop("confusion_matrix", None)
        config = read_run_file(best_dir / "config.json", read_json)
        numbers["best"] = {"hyperparameters": config["hyperparameters"], "retrain_epochs": metrics["retrain_epochs"],
                           "precision": config.get("precision"), "test": test}
        if test.get("labeled"):
            numbers["worst_classes"] = sorted(test["per_class"], key=lambda c: (c["accuracy"], -c["support"]))[:WORST_CLASSES]
        if matrix is not None:
            extras["confusion"], extras["confusion_note"] = plot_confusion(np.array(matrix), names)
        if (best_dir / "test_predictions.parquet").is_file():
            extras["grid"] = prediction_grid(read_run_file(best_dir / "test_predictions.parquet", pd.read_parquet), names)
    return numbers, extras


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else f"<p>({html.escape(alt)}: no data)</p>"


def render_html(numbers: dict[str, Any], extras: dict[str, Any]) -> str:
    """One HTML page with every figure embedded as a data URI: no network, no side files."""
    e, search, dataset, best = numbers["experiment"], numbers["search"], numbers["dataset"], numbers["best"]
    wall = f"{search['wall_time_s']:.0f} s" if search.get("wall_time_s") else "unknown"
    parts = [
        f"<h1>carclf report: {html.escape(e['run']['name'])}</h1>",
        "<h2>Experiment and data</h2>",
        _table([{"experiment": e["source"], "data": f"{e['data']['format']} {e['data']['root']}", "classes": dataset["classes"],
                 **{f"{k} images": v for k, v in dataset["rows_by_split"].items()}, "image size": e["data"]["image_size"],
                 "weights": e["model"]["weights"]}]),
        _table([{"trials": search["trials"], "finished": search["finished"], "stopped early (ASHA)": search["stopped_early"],
                 "diverged": search["diverged"], "failed": search["failed"], "interrupted": search["interrupted"],
                 "never started": search["never_started"], "sampler": search.get("sampler"), "wall time": wall,
                 "time in training steps": f"{search['useful_fraction']:.0%}" if search.get("useful_fraction") is not None else "unknown",
                 "metric": f"{search['mode']} {search['metric']}"}]),
        f"<p>Selection: {html.escape(search['selection'])}.</p>",
    ]
    if numbers["against_start"]:
        parts.append(f"<p><b>Against the starting configuration:</b> {html.escape(numbers['against_start']['statement'])}</p>")
    stops = numbers["early_stopping"]
    if stops:
        parts.append(f"<p>ASHA stopped {stops['stopped']} trial(s) at a rung, {stops['stopped_within_noise']} of them within noise of the "
                     f"cut (under {NOISE_Z} combined standard errors); {stops['spared']} trial(s) below a cut went on because they "
                     "were within the noise margin (scheduler.noise_z).</p>")
    if numbers["transfer"]:
        transfer = numbers["transfer"]
        parts.append(f"<p><b>Transfer:</b> a linear probe on frozen features scored {transfer['pretrained_accuracy']:.3f} with "
                     f"{html.escape(str(e['model']['weights']))} weights against {transfer['random_accuracy']:.3f} with random weights "
                     f"(± {transfer['standard_error']:.3f}): pretrained is {html.escape(transfer['verdict'])}.</p>")
    if best:
        test = best["test"]
        parts += ["<h2>Best configuration</h2>", _table([{**best["hyperparameters"], "retrain epochs": best["retrain_epochs"],
                                                          "precision": best.get("precision")}])]
        if test.get("labeled"):
            parts.append(_table([{"test images": test["count"], "top-1 accuracy": test["accuracy"], "top-5 accuracy": test["top5_accuracy"],
                                  "macro precision": test["macro_precision"], "macro recall": test["macro_recall"], "macro F1": test["macro_f1"]}]))
        else:
            parts.append(f"<p>{html.escape(test.get('note', 'no test metrics'))}</p>")
    parts += ["<h2>Top trials</h2>", f"<p>{html.escape(noise_statement(numbers))}</p>", _table(numbers["top_trials"]),
              "<h2>Learning curves</h2>", _img(extras.get("curves"), "learning curves"),
              "<h2>Hyperparameters against the validation metric</h2>", _img(extras.get("hyperparameters"), "hyperparameters"),
              "<h2>Parameter importance</h2>", f"<p>{html.escape(numbers['parameter_importance_note'])}</p>",
              _img(extras["importance"], "parameter importance") if "importance" in extras else ""]
    if "confusion" in extras:
        parts += [f"<h2>Confusion matrix ({html.escape(extras['confusion_note'])}, rows normalised)</h2>", _img(extras["confusion"], "confusion matrix")]
    if best and best["test"].get("labeled"):
        parts += ["<h2>Most-confused pairs</h2>", _table(best["test"]["most_confused"]),
                  f"<h2>The {WORST_CLASSES} worst classes</h2>",
                  _table(numbers["worst_classes"], ["class_name", "accuracy", "precision", "recall", "f1", "support"])]
    if extras.get("grid"):
        cells = "".join(
            f'<figure class="{"wrong" if c["wrong"] else "right"}"><img src="{c["uri"]}" alt="{html.escape(c["true"])}">'
            f'<figcaption>{"✗" if c["wrong"] else "✓"} true: {html.escape(c["true"])}<br>predicted: {html.escape(c["predicted"])} '
            f'({c["confidence"]:.0%})</figcaption></figure>' for c in extras["grid"])
        parts += ["<h2>Test images (wrong ones first, marked ✗)</h2>", f'<div class="grid">{cells}</div>']
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}img{max-width:100%}"
             ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:170px;font-size:11px;padding:3px;border:3px solid #3a3}"
             "figure.wrong{border-color:#d22;background:#fee}")
    return f'<!doctype html><html><head><meta charset="utf-8"><title>carclf report</title><style>{style}</style></head><body>{"".join(parts)}</body></html>\n'


def noise_statement(numbers: dict[str, Any]) -> str:
    """How far to trust the ranking: the validation set's size, and which top trials are within noise of the best."""
    search, close = numbers["search"], numbers["within_noise"]
    text = (f"Scores are measured on {search['validation_size']} validation images; standard_error is the binomial "
            "standard error of an accuracy on that many images.")
    if close:
        text += (f" Within noise of the best (a difference under 1.96 combined standard errors): {', '.join(close)}; "
                 "more validation images would be needed to tell them apart.")
    elif numbers["top_trials"] and numbers["top_trials"][0].get("standard_error") is not None:
        text += " The best trial is clear of the others by more than 1.96 combined standard errors."
    return text


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.json` and `report.html` into `run_dir` (atomically) and return their paths."""
    run_dir = Path(run_dir)
    numbers, extras = build_report(run_dir)
    json_path = write_json(run_dir / "report.json", numbers)
    html_path = write_text(run_dir / "report.html", render_html(numbers, extras))
    return json_path, html_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.report", description="Regenerate a run's report.html and report.json.")
    parser.add_argument("run_dir", help="the run folder (e.g. runs/demo)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [name for name in ("experiment.json", "dataset.parquet", "trials.parquet") if not (run_dir / name).is_file()]
    if missing:
        print(f"error: {run_dir}: not a finished run folder (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        json_path, html_path = write_report(run_dir)
    except RunFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
