"""The report of a real search: report.json's numbers, and report.html as a browser shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tuning.report_figures import CONFUSION_LIMIT, hyperparameter_axes, learning_curves, plot_confusion
from tuning.report_html import render_html

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Reports on every <img> once the page has loaded: how many decoded to a picture.
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", images.filter(i => !(i.complete && i.naturalWidth > 0)).length);
  document.body.setAttribute("data-headline-bottom", Math.ceil(document.querySelector(".headline").getBoundingClientRect().bottom));
  document.body.setAttribute("data-too-wide", [...document.querySelectorAll("table")].filter(
    t => t.getBoundingClientRect().right > document.documentElement.clientWidth).length);
});</script>"""
FIRST_SCREEN = (1200, 900)


@pytest.mark.slow
def test_report_json_has_the_documented_numbers(finished_run):
    run_dir, _ = finished_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema_version"] == 6
    assert report["dataset"] == {"classes": 4, "rows_by_split": {"train": 32, "test": 12, "val": 8}}
    search = report["search"]
    assert search["trials"] == 6 and search["stopped_early"] >= 1 and search["failed"] == 0 and search["diverged"] == 0
    assert search["stopped_early"] + search["finished"] == 6
    assert search["wall_time_s"] > 0 and search["validation_size"] == 8 and "best epoch" in search["selection"]
    top = report["top_trials"]
    assert len(top) == 6 and [t["best_val_loss"] for t in top] == sorted(t["best_val_loss"] for t in top)  # best (lowest) first
    assert {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth", "epochs", "best_epoch", "status"} <= set(top[0])
    assert top[0]["standard_error"] is None  # a loss has no binomial standard error
    assert isinstance(report["within_noise"], list)
    assert set(report["parameter_importance"]) <= {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth", "head_epochs"}
    best = report["best"]
    assert best["test"]["count"] == 12 and 0 <= best["test"]["macro_f1"] <= 1
    assert best["delivered"] in ("retrained", "trial") and best["trial"]["trial_id"] == top[0]["trial_id"]
    assert best["reproduction"]["verdict"] in ("reproduced", "departed") and best["reason"]
    assert len(report["worst_classes"]) == 4
    accuracies = [c["accuracy"] for c in report["worst_classes"]]
    assert accuracies == sorted(accuracies)


@pytest.mark.slow
def test_report_html_is_self_contained(finished_run):
    run_dir, _ = finished_run
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    has_importance = bool(json.loads((run_dir / "report.json").read_text())["parameter_importance"])
    assert len(sources) == 3 + has_importance + 12  # curves, hyperparameters, confusion, importance; 12 test images
    assert all(src.startswith("data:image/") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "Most-confused pairs" in page and "The 20 worst classes" in page and "✗" in page
    assert "Selection: each trial is scored by its best epoch" in page and "measured on 8 validation images" in page


@pytest.mark.slow
def test_report_command_regenerates_and_refuses_other_folders(finished_run, tmp_path):
    run_dir, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray", "report.*"))
    result = subprocess.run([sys.executable, "-m", "tuning.report", str(copy)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((copy / "report.json").read_text())["top_trials"] == json.loads((run_dir / "report.json").read_text())["top_trials"]
    bad = subprocess.run([sys.executable, "-m", "tuning.report", str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a finished run folder" in bad.stderr


def test_confusion_heatmap_at_196_classes_keeps_the_most_confused():
    rng = np.random.default_rng(0)
    matrix = np.diag(rng.integers(5, 20, 196))
    matrix[3, 150] = matrix[150, 3] = 9  # two classes that confuse each other
    uri, note = plot_confusion(matrix, [f"class {i}" for i in range(196)])
    assert note == f"the {CONFUSION_LIMIT} classes with the most errors"
    assert uri.startswith("data:image/png;base64,")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_every_image_loaded(finished_run, tmp_path):
    run_dir, _ = finished_run
    page = tmp_path / "report.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    common = [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    window = "--window-size={},{}".format(*FIRST_SCREEN)
    dom = subprocess.run([*common, window, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probed = dict(re.findall(r'data-(images|broken|headline-bottom|too-wide)="(\d+)"', dom))
    assert len(probed) == 4, dom[:500]
    assert int(probed["images"]) >= 15 and int(probed["broken"]) == 0
    assert int(probed["headline-bottom"]) <= FIRST_SCREEN[1]  # the winner, test score, start and transfer verdict in the first screen
    assert int(probed["too-wide"]) == 0  # every table fits the page

    screenshot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1200,3000", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    with Image.open(screenshot) as shot:
        assert shot.size == (1200, 3000)
        assert len(shot.convert("RGB").getcolors(1 << 20) or []) > 200  # a real page with plots, not a blank one


def test_standard_errors_and_noise_on_accuracy():
    import pandas as pd

    from tuning.trials import Selection, standard_error, top_trials, within_noise

    rows = [{"trial_id": t, "epoch": 1, "status": "finished", "best_val_accuracy": v, "best_epoch": 1, "config/batch_size": 8}
            for t, v in (("a", 0.80), ("b", 0.78), ("c", 0.40))]
    top = top_trials(pd.DataFrame(rows), Selection("val_accuracy", "max"), validation_size=100)
    assert [row["trial_id"] for row in top] == ["a", "b", "c"]
    assert top[0]["standard_error"] == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    assert within_noise(top, "best_val_accuracy") == ["b"]  # 2 points apart on 100 images; c is clearly worse
    assert standard_error(0.5, "val_loss", 100) is None


def test_a_hand_made_run_reports_its_gain_over_the_start_and_counts_each_ending_apart(tiny_index, tmp_path):
    """A run folder written by hand: the report's numbers come from its files alone."""
    import pandas as pd

    from carclf.data.table import save_index
    from tuning.experiment import load_experiment
    from tuning.report import build_report

    experiment = load_experiment(overrides=["search.start=[{ batch_size = 16, learning_rate = 0.01, lr_decay = 0.0001, "
                                            "unfreeze_depth = 0, head_epochs = 0 }]"]).to_dict()
    (tmp_path / "experiment.json").write_text(json.dumps(experiment))
    save_index(tiny_index, tmp_path / "dataset.parquet")  # 8 validation images
    ending = {"s": ("finished", [0.25, 0.5]), "w": ("finished", [0.5, 0.875]), "a": ("stopped early", [0.125]),
              "i": ("interrupted", [0.25]), "d": ("diverged", [0.25]), "n": ("never started", [None])}
    rows = []
    for number, (trial_id, (status, accuracies)) in enumerate(ending.items(), start=1):
        best = None
        for epoch, accuracy in enumerate(accuracies, start=1):
            best = accuracy if best is None or (accuracy or 0) > best else best
            rows.append({"trial_id": trial_id, "trial_path": f"/x/CarClassifierTrainable_{trial_id}_{number}_a", "status": status,
                         "epoch": epoch if accuracy is not None else None, "val_accuracy": accuracy, "best_val_accuracy": best,
                         "best_epoch": epoch, "config/batch_size": 16, "config/learning_rate": 0.01 if trial_id == "s" else 0.001 * (number + 1),
                         "config/lr_decay": 0.0001, "config/unfreeze_depth": 0, "config/head_epochs": 0})
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    decisions = [{"trial_id": "a", "rung": 1, "epoch": 1, "score": 0.125, "cut": 0.25, "margin": 0.1, "within_noise": True, "decision": "stopped"},
                 {"trial_id": "i", "rung": 1, "epoch": 1, "score": 0.25, "cut": 0.3, "margin": 0.2, "within_noise": True, "decision": "spared"}]
    (tmp_path / "rungs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decisions))
    (tmp_path / "search.json").write_text(json.dumps({"wall_time_s": 10.0, "sampler": "gp", "transfer": None}))

    numbers, _ = build_report(tmp_path)
    search = numbers["search"]
    assert {k: search[k] for k in ("trials", "finished", "stopped_early", "interrupted", "diverged", "failed", "never_started")} == \
        {"trials": 6, "finished": 2, "stopped_early": 1, "interrupted": 1, "diverged": 1, "failed": 0, "never_started": 1}
    assert search["sampler"] == "gp" and numbers["early_stopping"] == {"stopped": 1, "stopped_within_noise": 1, "spared": 1}
    gain = numbers["against_start"]
    assert gain["trial_id"] == "w" and gain["start_trial_id"] == "s" and gain["gain"] == pytest.approx(0.375)
    assert gain["standard_error"] == pytest.approx(((0.875 * 0.125 + 0.25) / 8) ** 0.5)
    assert gain["within_noise"]  # 3 of 8 images: under 1.96 standard errors
    assert "nothing better than the starting configuration within noise" in gain["statement"]
    assert numbers["parameter_importance"] == {} and numbers["parameter_importance_note"].startswith("withheld: 4 scored trials")
    numbers, extras = build_report(tmp_path)
    page = render_html(numbers, extras)
    assert "ASHA stopped 1 trial(s) at a rung, 1 of them within noise" in page
    headline = page[page.index('<div class="headline">'):page.index("<h2>Experiment and data</h2>")]  # above everything else
    assert "<b>Winner:</b> trial w, best val_accuracy 0.875 at epoch 2" in headline and "on 8 validation images" in headline
    assert "<b>Against the starting configuration:</b>" in headline
    assert ">diverged at epoch 1, best 0.25 at epoch 1</td>" in page  # not -inf with nothing said

    # The winning trial's own model was delivered, its retraining having departed: the first screen says which and why.
    reason = "the retraining did not train like its trial (...); the trial's own model is delivered instead"
    metrics = {"retrain_epochs": 2, "delivered": "trial", "reason": reason, "trial": {"trial_id": "w", "score": 0.875},
               "reproduction": {"verdict": "departed"},
               "start": {"delivered": "retrained", "test_accuracy": 0.25, "gain": 0.25, "standard_error": 0.13, "retrain_history": [],
                         "statement": "tuning did not beat the start on test: +0.250 ± 0.130, within noise"},
               "test": {"labeled": True, "count": 12, "accuracy": 0.5, "top5_accuracy": 1.0,
                                                                 "per_class": [], "most_confused": [], "macro_precision": 0.5,
                                                                 "macro_recall": 0.5, "macro_f1": 0.5}}
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "best" / "config.json").write_text(json.dumps({"hyperparameters": {"batch_size": 16}, "precision": "float32"}))
    numbers, extras = build_report(tmp_path)
    assert numbers["best"]["delivered"] == "trial" and numbers["best"]["reproduction"] == {"verdict": "departed"}
    page = render_html(numbers, extras)
    headline = page[page.index('<div class="headline">'):page.index("<h2>Experiment and data</h2>")]
    assert "<b>Test:</b> the winning trial&#x27;s own model, at its best epoch (2): top-1 accuracy 0.500" in headline
    assert "<b>Delivered:</b> the retraining did not train like its trial" in headline
    assert "<b>Against the start, on test:</b> the starting configuration delivered the same way tests 0.250: tuning did not beat" in headline
    assert numbers["best"]["start"]["gain"] == 0.25 and "retrain_history" not in numbers["best"]["start"]


def test_a_diverged_trial_is_marked_in_no_trial_colour_and_in_its_own_shape():
    """Twelve trials use every colour of Matplotlib's cycle, its red included; the diverged mark is none of them."""
    from matplotlib.colors import to_hex

    statuses = {3: "diverged", 5: "stopped early"}
    rows = [{"trial_id": f"t{trial:02d}", "epoch": epoch, "val_loss": 1.0 / (trial + epoch), "status": statuses.get(trial, "finished")}
            for trial in range(12) for epoch in (1, 2)]
    axis = learning_curves(pd.DataFrame(rows), "val_loss").axes[0]
    trials = [line for line in axis.lines if line.get_label().startswith("t")]
    marks = {line.get_marker(): to_hex(line.get_color()) for line in axis.lines if line not in trials}
    trial_colours = {to_hex(line.get_color()) for line in trials}
    assert len(trials) == 12 and to_hex("tab:red") in trial_colours
    assert set(marks) == {"x", "D"} and marks["D"] not in trial_colours and marks["x"] == to_hex(trials[5].get_color())
    assert "black diamond = diverged" in axis.get_title()


def test_choices_are_categories_and_integers_sit_on_whole_number_ticks():
    from tuning.experiment import load_experiment
    from tuning.trials import Selection

    space = load_experiment(overrides=["search.space={ batch_size = { choice = [16, 32] }, unfreeze_depth = { randint = [0, 4] }, "
                                       "learning_rate = { loguniform = [0.001, 0.05] } }", "search.start=[]"]).search.space
    rows = [{"trial_id": f"t{n}", "epoch": 1, "status": "finished", "best_val_accuracy": 0.1 * n, "best_epoch": 1,
             "config/batch_size": batch, "config/unfreeze_depth": depth, "config/learning_rate": rate}
            for n, (batch, depth, rate) in enumerate([(16, 0, 0.001), (32, 3, 0.01), (32, 1, 0.05)], start=1)]
    axes = {axis.get_xlabel(): axis for axis in hyperparameter_axes(pd.DataFrame(rows), space, Selection()).axes}
    batch = axes["batch_size"]
    assert [label.get_text() for label in batch.get_xticklabels()] == ["16", "32"]  # two categories, not 31, 32, 33
    assert sorted(batch.collections[0].get_offsets()[:, 0]) == [0, 1, 1]
    depth_ticks = [tick for tick in axes["unfreeze_depth"].get_xticks() if 0 <= tick <= 3]
    assert depth_ticks and all(float(tick).is_integer() for tick in depth_ticks)  # no 0.5 steps
    assert axes["learning_rate"].get_xscale() == "log"
