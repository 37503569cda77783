"""report.html: one page with every figure embedded as a data URI, so it needs no network and no side files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tuning.report_numbers import WORST_CLASSES
from tuning.trials import NOISE_Z, Selection

LONG_CELL = 30  # characters


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in columns)  # names wrap at their underscores
    body = "".join("<tr>" + "".join(_cell(_format(row.get(c))) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(text: str) -> str:
    """A table cell; a long value (a path) may break anywhere, so the table fits the page."""
    return f'<td class="long">{html.escape(text)}</td>' if len(text) > LONG_CELL else f"<td>{html.escape(text)}</td>"


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
        headline(numbers),
        advice_list(numbers["advice"]),
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
    stops = numbers["early_stopping"]
    if stops:
        parts.append(f"<p>ASHA stopped {stops['stopped']} trial(s) at a rung, {stops['stopped_within_noise']} of them within noise of the "
                     f"cut (under {NOISE_Z} combined standard errors); {stops['spared']} trial(s) below a cut went on because they "
                     "were within the noise margin (scheduler.noise_z).</p>")
    if best:
        test = best["test"]
        delivered = {"epochs": best["retrain_epochs"], "delivered": best.get("delivered") or "retrained", "precision": best.get("precision")}
        parts += ["<h2>Best configuration</h2>", _table([{**best["hyperparameters"], **delivered}])]
        if test.get("labeled"):
            parts.append(_table([{"test images": test["count"], "top-1 accuracy": test["accuracy"], "top-5 accuracy": test["top5_accuracy"],
                                  "macro precision": test["macro_precision"], "macro recall": test["macro_recall"], "macro F1": test["macro_f1"]}]))
        else:
            parts.append(f"<p>{html.escape(test.get('note', 'no test metrics'))}</p>")
    parts += ["<h2>Top trials</h2>", f"<p>{html.escape(noise_statement(numbers))}</p>",
              _table(with_divergence(numbers["top_trials"], extras.get("diverged", {}), Selection(search["metric"], search["mode"]).objective)),
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
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}table{border-collapse:collapse;margin:.5em 0;"
             "max-width:100%}td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px}td.long{overflow-wrap:anywhere}th{background:#f3f3f3}"
             "img{max-width:100%}.headline{background:#f5f8ff;border:1px solid #9ab;padding:.3em 1em;font-size:15px}"
             ".advice{background:#fffbea;border:1px solid #db8;padding:.3em 1em;margin-top:.5em;font-size:14px}"
             ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:170px;font-size:11px;padding:3px;border:3px solid #3a3}"
             "figure.wrong{border-color:#d22;background:#fee}")
    return f'<!doctype html><html><head><meta charset="utf-8"><title>carclf report</title><style>{style}</style></head><body>{"".join(parts)}</body></html>\n'


DELIVERED = {"retrained": "the winner retrained on train + validation for {epochs} epoch(s)",
             "trial": "the winning trial's own model, at its best epoch ({epochs})"}


def headline(numbers: dict[str, Any]) -> str:
    """The first screen: the winner and its validation score, the delivered model's test score, the comparison with
    the start and the transfer verdict."""
    search, best, top = numbers["search"], numbers["best"], numbers["top_trials"]
    lines = []
    if top:
        winner = top[0]
        value = winner.get(Selection(search["metric"], search["mode"]).objective)
        score = f"best {search['metric']} {value:.3f} at epoch {winner.get('best_epoch')}" if isinstance(value, float) else "no score"
        error = f" (± {winner['standard_error']:.3f})" if winner.get("standard_error") is not None else ""
        settings = ", ".join(f"{k}={_format(v)}" for k, v in (best or {}).get("hyperparameters", {}).items())
        lines.append(f"<b>Winner:</b> trial {html.escape(str(winner['trial_id']))}, {html.escape(score + error)} on "
                     f"{search['validation_size']} validation images" + (f"; {html.escape(settings)}" if settings else ""))
    if best and best["test"].get("labeled"):
        test = best["test"]
        delivered = DELIVERED[best.get("delivered") or "retrained"].format(epochs=best["retrain_epochs"])
        lines.append(f"<b>Test:</b> {html.escape(delivered)}: "
                     f"top-1 accuracy {test['accuracy']:.3f} (top-5 {test['top5_accuracy']:.3f}) on {test['count']} test images")
    elif best:
        lines.append(f"<b>Test:</b> {html.escape(best['test'].get('note', 'no test metrics'))}")
    if best and best.get("reason"):
        lines.append(f"<b>Delivered:</b> {html.escape(best['reason'])}")
    if best and best.get("start"):
        start = best["start"]
        lines.append(f"<b>Against the start, on test:</b> the starting configuration delivered the same way tests "
                     f"{start['test_accuracy']:.3f}: {html.escape(start['statement'])}")
    if numbers["against_start"]:
        lines.append(f"<b>Against the starting configuration:</b> {html.escape(numbers['against_start']['statement'].rstrip('.'))}")
    if numbers["transfer"]:
        transfer = numbers["transfer"]
        lines.append(f"<b>Transfer:</b> a linear probe on frozen features scored {transfer['pretrained_accuracy']:.3f} with "
                     f"{html.escape(Path(str(numbers['experiment']['model']['weights'])).name)} weights against {transfer['random_accuracy']:.3f} "
                     f"with random weights (± {transfer['standard_error']:.3f}): pretrained is {html.escape(transfer['verdict'])}")
    return '<div class="headline">' + "".join(f"<p>{line}.</p>" for line in lines) + "</div>" if lines else ""


def advice_list(advice: list[dict[str, str]]) -> str:
    """What to change for the next run (`tuning.advice`), one item per key, right under the headline."""
    if not advice:
        return ""
    items = "".join(f"<li><code>{html.escape(item['key'])}</code>: {html.escape(item['advice'])}.</li>" for item in advice)
    return f'<div class="advice"><b>For the next run:</b><ul>{items}</ul></div>'


def with_divergence(rows: list[dict[str, Any]], diverged: dict[str, dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """The top trials with a diverged trial's score cell saying what it reached before it diverged."""
    out = []
    for row in rows:
        before = diverged.get(str(row["trial_id"]))
        if row.get("status") == "diverged" and before is not None:
            reached = f", best {before['best']:.4g} at epoch {before['best_epoch']}" if before["best"] is not None else ""
            row = {**row, objective: f"diverged at epoch {before['diverged_epoch']}{reached}"}
        out.append(row)
    return out


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
