"""The report of a real search: report.json's numbers, and report.html as a browser shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tuning.report import CONFUSION_LIMIT, plot_confusion

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Reports on every <img> once the page has loaded: how many decoded to a picture.
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", images.filter(i => !(i.complete && i.naturalWidth > 0)).length);
});</script>"""


def test_report_json_has_the_documented_numbers(finished_run):
    run_dir, _ = finished_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema_version"] == 2
    assert report["dataset"] == {"classes": 4, "rows_by_split": {"train": 32, "test": 12, "val": 8}}
    search = report["search"]
    assert search["trials"] == 6 and search["stopped_early"] >= 1 and search["failed"] == 0 and search["diverged"] == 0
    assert search["stopped_early"] + search["finished"] == 6
    assert search["wall_time_s"] > 0 and search["validation_size"] == 8 and "best epoch" in search["selection"]
    top = report["top_trials"]
    assert len(top) == 6 and [t["val_loss"] for t in top] == sorted(t["val_loss"] for t in top)  # best (lowest) first
    assert {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth", "epochs", "best_epoch", "status"} <= set(top[0])
    assert top[0]["standard_error"] is None  # a loss has no binomial standard error
    assert isinstance(report["within_noise"], list)
    assert set(report["parameter_importance"]) <= {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth", "head_epochs"}
    best = report["best"]
    assert best["test"]["count"] == 12 and 0 <= best["test"]["macro_f1"] <= 1
    assert len(report["worst_classes"]) == 4
    accuracies = [c["accuracy"] for c in report["worst_classes"]]
    assert accuracies == sorted(accuracies)


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


def test_report_command_regenerates_and_refuses_other_folders(finished_run, tmp_path):
    run_dir, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("train_car_classifier_*", "report.*"))
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_every_image_loaded(finished_run, tmp_path):
    run_dir, _ = finished_run
    page = tmp_path / "report.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    common = [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, dom[:500]
    assert int(images.group(1)) >= 15 and int(broken.group(1)) == 0

    screenshot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1200,3000", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    with Image.open(screenshot) as shot:
        assert shot.size == (1200, 3000)
        assert len(shot.convert("RGB").getcolors(1 << 20) or []) > 200  # a real page with plots, not a blank one


def test_standard_errors_and_noise_on_accuracy():
    from carclf.trainable import Selection
    from tuning.trials import standard_error, top_trials, within_noise
    import pandas as pd

    rows = [{"trial_id": t, "epoch": 1, "status": "finished", "best_val_accuracy": v, "best_epoch": 1, "config/batch_size": 8}
            for t, v in (("a", 0.80), ("b", 0.78), ("c", 0.40))]
    top = top_trials(pd.DataFrame(rows), Selection("val_accuracy", "max"), validation_size=100)
    assert [row["trial_id"] for row in top] == ["a", "b", "c"]
    assert top[0]["standard_error"] == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    assert within_noise(top, "val_accuracy") == ["b"]  # 2 points apart on 100 images; c is clearly worse
    assert standard_error(0.5, "val_loss", 100) is None
