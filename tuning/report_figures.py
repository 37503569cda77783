"""The report's figures, each a data URI that report.html embeds: PNG plots and JPEG thumbnails.

`report_figures` makes them from the run folder's files (`tuning.report_numbers.RunFiles`) and the
numbers already computed; none of them goes into report.json.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from tuning.report_numbers import RunFiles  # noqa: E402
from tuning.search_space import SearchSpace  # noqa: E402
from tuning.trials import Selection, trial_summaries  # noqa: E402

logger = logging.getLogger(__name__)
CONFUSION_LIMIT = 30
GRID_IMAGES = 24


def report_figures(run: RunFiles, numbers: dict[str, Any]) -> dict[str, Any]:
    """The figures and extras only the HTML shows: curves, hyperparameters, importance, confusion, test images."""
    trials, selection, names = run.trials, run.selection, run.class_names
    has_metric = selection.metric in trials
    extras: dict[str, Any] = {"curves": plot_learning_curves(trials, selection.metric) if has_metric else None,
                              "hyperparameters": plot_hyperparameters(trials, run.experiment.search.space, selection) if has_metric else None,
                              "diverged": diverged_bests(trials, selection)}
    if numbers["parameter_importance"]:
        extras["importance"] = plot_importance(numbers["parameter_importance"])
    matrix = run.best_metrics["test"].get("confusion_matrix") if run.best_metrics is not None else None
    if matrix is not None:
        extras["confusion"], extras["confusion_note"] = plot_confusion(np.array(matrix), names)
    if run.best_predictions is not None:
        extras["grid"] = prediction_grid(run.best_predictions, names)
    return extras


def _figure_to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_to_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()



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
    return _figure_to_data_uri(hyperparameter_axes(trials, space, selection))


def hyperparameter_axes(trials: pd.DataFrame, space: SearchSpace, selection: Selection) -> plt.Figure:
    """Each hyperparameter against the trial's score (its best epoch's metric): a choice as categories in its
    order, an integer range on whole-number ticks, a log-uniform one on a log axis."""
    scores = trial_summaries(trials, selection)
    scores = scores[np.isfinite(scores[selection.objective].astype(float))]
    keys = [k for k in space if k in scores]
    figure, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3), squeeze=False)
    for axis, key in zip(axes[0], keys):
        dimension, values = space.get(key), scores[key]
        if dimension.kind == "choice":
            choices = list(dimension.args)
            axis.scatter([choices.index(v) if v in choices else np.nan for v in values], scores[selection.objective].astype(float), alpha=0.8)
            axis.set_xticks(range(len(choices)), [str(c) for c in choices])
            axis.set_xlim(-0.5, len(choices) - 0.5)
        else:
            axis.scatter(values.astype(float), scores[selection.objective].astype(float), alpha=0.8)
            if dimension.kind == "randint":
                axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            elif dimension.kind == "loguniform":
                axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.tick_params(axis="x", labelrotation=35, labelsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {selection.metric}")
    return figure


def diverged_bests(trials: pd.DataFrame, selection: Selection) -> dict[str, dict[str, Any]]:
    """For each diverged trial, its best finite value and that epoch, and the epoch it diverged at: the ranking
    scores it the worst value, and the report shows what it reached before."""
    out: dict[str, dict[str, Any]] = {}
    if selection.metric not in trials or "status" not in trials:
        return out
    for trial_id, rows in trials[trials["status"] == "diverged"].dropna(subset=["epoch"]).groupby("trial_id"):
        values = pd.to_numeric(rows[selection.metric], errors="coerce").astype(float)
        values = values[np.isfinite(values)]
        entry: dict[str, Any] = {"diverged_epoch": int(rows["epoch"].max()), "best": None, "best_epoch": None}
        if len(values):
            at = values.idxmax() if selection.mode == "max" else values.idxmin()
            entry.update(best=float(values[at]), best_epoch=int(rows.loc[at, "epoch"]))
        out[str(trial_id)] = entry
    return out


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
