"""Bad inputs through the real command-line tools: images, annotations, experiments, flags.

Every case builds one bad input in a temporary folder (a damaged copy of the tiny dataset, a CSV
dataset made from it, an experiment file, a flag, a model folder) and runs the real CLI: its
`main(argv)`, in this process (a new Python per case would cost 7 s of imports each; the CLIs'
own tests start them as processes). Each must exit non-zero (with its documented status), let no
exception escape (no `Traceback`), and say on stderr which file, key or value is at fault.
Searches run with `--dry-run`, which checks the experiment, the annotations, every image and the
weights without starting Ray.

The control cases run the same commands on the undamaged inputs: they must pass, so each bad
case fails because of its one damage and nothing else. What needs a fresh Python (nothing heavy
imported before `--help` answers, no TensorFlow chatter in the output) is in tests/test_startup.py.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import scipy.io

from tests.tuning.helpers import search_command

CLASS_COUNT = 4  # tiny_cars (tests/conftest.py TINY_SPEC)
CSV_COLUMNS = ["file", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "split"]

# A valid experiment for the tiny dataset; the experiment cases change one thing in it.
EXPERIMENT = """\
[data]
format = "devkit"
image_size = 32
validation_fraction = 0.25

[model]
weights = "none"
dropout = 0.0

[train]
epochs = 1
momentum = 0.9

[search]
num_samples = 2
metric = "val_loss"

[search.space]
batch_size = { choice = [8, 16] }
learning_rate = { loguniform = [0.001, 0.1] }
unfreeze_depth = { randint = [0, 3] }

[[search.start]]
batch_size = 8
learning_rate = 0.005
unfreeze_depth = 0

[scheduler]
max_epochs = 2

[resources]
cpus_per_trial = 1
"""


@dataclass
class Context:
    """What a case builds its bad input from: its own temporary folder, the tiny dataset, the model."""

    tmp: Path
    cars: Path  # the session's tiny dataset: never damaged, only copied
    request: pytest.FixtureRequest

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    @property
    def cache(self) -> Path:
        return self.tmp / "cache"

    @property
    def model(self) -> Path:
        return self.request.getfixturevalue("tiny_model")


def small_model(path: Path, carclf_inputs: bool = True) -> Path:
    """A small Keras model (32 px in, 4 classes out) saved at `path`: with carclf's uint8 input and its
    augmentation and preprocessing layers, as `carclf.model` builds one, or (`carclf_inputs` False)
    a plain float model that carclf did not make."""
    import keras

    from carclf.layers import RandomFlipRotation, ResNetPreprocessing

    if carclf_inputs:
        inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
        pixels = ResNetPreprocessing(name="preprocessing")(RandomFlipRotation(name="augmentation")(inputs))
    else:
        inputs = pixels = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(CLASS_COUNT, activation="softmax")(keras.layers.GlobalAveragePooling2D()(pixels))
    keras.Model(inputs, outputs).save(path)
    return path


def write_labels(folder: Path, count: int = CLASS_COUNT) -> None:
    (folder / "labels.json").write_text(json.dumps({"class_names": [f"class {i}" for i in range(count)]}))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small carclf-shaped model with labels.json, saved as carclf saves one.

    `carclf.predict` needs a loadable carclf model whose outputs match its labels; the bad inputs
    are refused before any prediction, so no trained ResNet50 is needed.
    """
    folder = tmp_path_factory.mktemp("model")
    write_labels(folder)
    return small_model(folder / "model.keras")


# --- building bad inputs ------------------------------------------------------------------------

def devkit_copy(ctx: Context) -> Path:
    """A private copy of the tiny devkit dataset, to damage."""
    root = ctx.tmp / "cars"
    if not root.exists():
        shutil.copytree(ctx.cars, root)
    return root


def read_records(root: Path, name: str) -> list[dict]:
    annotations = scipy.io.loadmat(root / "devkit" / name, squeeze_me=True)["annotations"]
    return [{field: (record[field].item() if hasattr(record[field], "item") else record[field])
             for field in annotations.dtype.names} for record in annotations]


def write_records(root: Path, name: str, records: list[dict]) -> None:
    """Save devkit records as the devkit does: a 1xN struct array of object fields."""
    fields = list(records[0])
    struct = np.zeros((1, len(records)), dtype=[(field, "O") for field in fields])
    for i, record in enumerate(records):
        for field in fields:
            struct[0, i][field] = record[field]
    scipy.io.savemat(root / "devkit" / name, {"annotations": struct})


def edit_records(ctx: Context, edit: Callable[[list[dict]], None], name: str = "cars_train_annos.mat") -> Path:
    root = devkit_copy(ctx)
    records = read_records(root, name)
    edit(records)
    write_records(root, name, records)
    return root


def damage_image(ctx: Context, content: Callable[[bytes], bytes | None], name: str = "cars_train/00001.jpg") -> Path:
    """The devkit copy with one image's bytes replaced (None: the file removed)."""
    root = devkit_copy(ctx)
    path = root / name
    new = content(path.read_bytes())
    if new is None:
        path.unlink()
    else:
        path.write_bytes(new)
    return root


def csv_dataset(ctx: Context, edit: Callable[[list[dict]], None] | None = None) -> Path:
    """The tiny dataset as a CSV dataset (labels.csv, with boxes and splits), `edit` applied to its rows.

    Row i of the list is line i + 2 of the file (line 1 is the header).
    """
    root = ctx.tmp / "csvcars"
    shutil.copytree(ctx.cars / "cars_train", root / "train")
    shutil.copytree(ctx.cars / "cars_test", root / "test")
    names = [str(name) for name in scipy.io.loadmat(ctx.cars / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    rows = []
    for split, annos in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        for record in read_records(ctx.cars, annos):
            rows.append({"file": f"{split}/{record['fname']}", "class": names[int(record["class"]) - 1],
                         **{key: str(record[key]) for key in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")}, "split": split})
    if edit is not None:
        edit(rows)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def folder_dataset(ctx: Context) -> Path:
    """The tiny dataset as `train/<class>/` and `test/<class>/` folders, with what a Mac and a careless copy
    leave in them: `.DS_Store`, `._*` AppleDouble files, a hidden folder, a `.webp` and a nested folder."""
    root = ctx.tmp / "foldercars"
    names = [str(name) for name in scipy.io.loadmat(ctx.cars / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    for split, annos in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        for record in read_records(ctx.cars, annos):
            folder = root / split / names[int(record["class"]) - 1]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(ctx.cars / f"cars_{split}" / record["fname"], folder / record["fname"])
    first = next((root / "train").iterdir())
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (first / "._00001.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "train" / ".hidden").mkdir()
    shutil.copy(next(first.glob("*.jpg")), root / "train" / ".hidden" / "x.jpg")
    (first / "photo.webp").write_bytes(b"RIFF")
    (first / "nested").mkdir()
    shutil.copy(next(first.glob("*.jpg")), first / "nested" / "y.jpg")
    return root


def without_rows(rows: list[dict]) -> None:
    rows.clear()


def set_row(index: int, **cells: str) -> Callable[[list[dict]], None]:
    def edit(rows: list[dict]) -> None:
        rows[index].update(cells)
    return edit


def experiment_file(ctx: Context, text: str, encoding: str = "utf-8") -> Path:
    path = ctx.tmp / "experiment.toml"
    path.write_text(text, encoding=encoding)
    return path


def edited(old: str, new: str) -> str:
    """The base experiment with `old` replaced by `new` (which must be there, so no case is a no-op)."""
    assert old in EXPERIMENT, old
    return EXPERIMENT.replace(old, new, 1)


# --- the commands -------------------------------------------------------------------------------

def search_dry_run(ctx: Context, *extra: str, data: Path | None = None) -> list[str]:
    """`tuning.search --dry-run` on the tiny dataset (or `data`), through tests/tuning's `search_command`."""
    command = search_command(ctx.cars, ctx.runs, "bad", *extra, cache=ctx.cache)
    if data is not None:
        command += ["--data-dir", str(data)]  # the last --data-dir wins
    return [*command, "--dry-run"]


def search_for_real(ctx: Context, *extra: str) -> list[str]:
    """`tuning.search` on the tiny dataset without `--dry-run`: for the cases that fail before any trial runs."""
    return search_command(ctx.cars, ctx.runs, "bad", *extra, cache=ctx.cache)


def without_ray_temp_folder(ctx: Context) -> Context:
    """Ray's local cluster cannot start: its temporary folder (RAY_TMPDIR) cannot be created."""
    ctx.request.getfixturevalue("monkeypatch").setenv("RAY_TMPDIR", "/proc/no-ray-here")
    return ctx


def run_folder_at(ctx: Context, stage: str, files: tuple[str, ...], status: str | None = None) -> Path:
    """A run folder of the base experiment at `stage`, holding only `files` of those a run writes (their
    contents do not matter before a resume reads them), and `status` as its status.json when given."""
    from tuning.experiment import load_experiment

    run_dir = ctx.runs / "kept"
    run_dir.mkdir(parents=True)
    experiment = load_experiment(experiment_file(ctx, EXPERIMENT), [f"data.root='{ctx.cars}'", f"run.storage_path='{ctx.runs}'"]).to_dict()
    for name in files:
        (run_dir / name).write_text(json.dumps(experiment) if name == "experiment.json" else "kept\n")
    (run_dir / "status.json").write_text(status if status is not None else json.dumps({"stage": stage, "time": 0}))
    return run_dir


def kept_run(ctx: Context, *edits: str, state: str = "this", study: str | None = None, rungs: str | None = None,
             experiment_json: str | None = None, storage: str = "") -> list[str]:
    """`--resume` of a run folder of the base experiment that stopped after it started (experiment.json with its run
    id, the dataset, status.json), holding the searcher's saved state of `state` ("this" run, "another" run of the
    same experiment, or "none"), a study.db exported from the state of `study` (likewise, "damaged", or None), `rungs` as
    rungs.jsonl, and experiment.json edited by `edits` (`table.key=value`) or replaced by `experiment_json`; the study is
    written to `storage` (`search.storage`) when one is given."""
    from ray.tune.search import Searcher

    from carclf.config import apply_overrides
    from tuning.experiment import load_experiment
    from tuning.run_folder import RunFolder
    from tuning.search_state import STATE_VERSION, experiment_fingerprint, export_search_state, write_state
    from tuning.study_storage import StudyPlace

    folder = RunFolder(ctx.runs / "kept")
    folder.path.mkdir(parents=True)
    experiment = load_experiment(experiment_file(ctx, EXPERIMENT), [f"data.root='{ctx.cars}'", f"run.storage_path='{ctx.runs}'",
                                                                     f"search.storage='{storage}'"])
    document = experiment.to_dict()

    def saved_state(run: str) -> dict:
        identity = {"fingerprint": experiment_fingerprint(document), "source": document["source"], "direction": "minimize",
                    "run_id": "0123456789ab" if run == "this" else "ba9876543210"}
        return {"version": STATE_VERSION, "identity": identity, "trials": [], "rungs": []}

    if state != "none":
        write_state(folder.ray_dir / Searcher.CKPT_FILE_TMPL.format("2026-01-01_00-00-00"), saved_state(state))
    if study == "damaged":
        folder.study_file.write_bytes(b"not a database\n" * 64)
    elif study is not None:
        export_search_state(StudyPlace(folder.path, experiment.search.storage), saved_state(study),
                            experiment.search.space.optuna_distributions())
    folder.write_experiment(apply_overrides(document, list(edits), "test"), {}, "0123456789ab")
    if experiment_json is not None:
        folder.experiment_file.write_text(experiment_json)
    folder.write_start(tiny_index(ctx))
    if rungs is not None:
        folder.rungs_file.write_text(rungs)
    return [sys.executable, "-m", "tuning.search", "--resume", str(folder.path)]


def tiny_index(ctx: Context):
    """The tiny dataset's index, as a run of the base experiment saves it."""
    from carclf.data.sources import prepare_dataset
    from tuning.experiment import load_experiment

    return prepare_dataset(load_experiment(experiment_file(ctx, EXPERIMENT), [f"data.root='{ctx.cars}'",
                                                                               f"data.cache_dir='{ctx.cache}'"]).settings.data).index


RUNG = '{"run_id": "0123456789ab", "trial_id": "a_00000", "rung": 1, "epoch": 1, "score": 0.5, "cut": null, "decision": "continued"}\n'


def search_csv(ctx: Context, edit: Callable[[list[dict]], None] | None = None) -> list[str]:
    root = csv_dataset(ctx, edit)
    return search_dry_run(ctx, "--set", "data.format='csv'", "--set", "data.csv_file='labels.csv'", data=root)


def search_experiment(ctx: Context, text: str, *extra: str, data: Path | None = None, encoding: str = "utf-8") -> list[str]:
    """`tuning.search --experiment FILE --dry-run`, the file holding `text` in `encoding`."""
    return [sys.executable, "-m", "tuning.search", "--experiment", str(experiment_file(ctx, text, encoding)),
            "--data-dir", str(data or ctx.cars), "--storage-path", str(ctx.runs), "--num-cpus", "2",
            "--set", f"data.cache_dir='{ctx.cache}'", *extra, "--dry-run"]


def train(ctx: Context, text: str = EXPERIMENT, *extra: str, data: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "carclf.train", "--experiment", str(experiment_file(ctx, text)),
            "--data-dir", str(data or ctx.cars), "--set", f"data.cache_dir='{ctx.cache}'",
            "--output", str(ctx.tmp / "out" / "model.keras"), *extra]


def predict(ctx: Context, *arguments: str, model: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "carclf.predict", "--model", str(model or ctx.model), *arguments]


def report(ctx: Context, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tuning.report", str(run_dir)]


def tiny_image(ctx: Context) -> str:
    return str(ctx.cars / "cars_test" / "00001.jpg")


FOLDER = object()  # model_with's files: a folder in the file's place


def config_with(**data: object) -> dict:
    """A config.json for the tiny model (32 px crops) as carclf writes one, with `data` in its settings.data."""
    return {"hyperparameters": None, "settings": {"data": {"image_size": 32, **data}, "model": {}, "train": {}}, "precision": "float32"}


def model_with(ctx: Context, names: object = None, config: object = None) -> Path:
    """The tiny model in a folder of its own, with `{"class_names": names}` as labels.json (the tiny model's names
    by default) and `config` as config.json (none by default); `FOLDER` puts a folder in either file's place."""
    folder = ctx.tmp / "model"
    folder.mkdir()
    shutil.copy(ctx.model, folder / "model.keras")
    write_labels(folder)
    labels = names if names is None or names is FOLDER else {"class_names": names}
    for name, content in (("labels.json", labels), ("config.json", config)):
        if content is FOLDER:
            (folder / name).unlink(missing_ok=True)
            (folder / name).mkdir()
        elif content is not None:
            (folder / name).write_text(json.dumps(content))
    return folder / "model.keras"


def model_file(ctx: Context, content: Callable[[bytes], bytes], labels: bool = True) -> Path:
    """model.keras holding `content` of the tiny model's bytes, with labels.json beside it unless `labels` is False."""
    folder = ctx.tmp / "model"
    folder.mkdir()
    (folder / "model.keras").write_bytes(content(ctx.model.read_bytes()))
    if labels:
        write_labels(folder)
    return folder / "model.keras"


def zip_without_config(ctx: Context) -> Path:
    """A zip archive named .keras that lacks the config.json every .keras file holds."""
    import zipfile

    path = model_file(ctx, lambda b: b"")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
    return path


def foreign_model(ctx: Context) -> Path:
    """A plain Keras model that carclf did not make: float input, no preprocessing layers."""
    folder = ctx.tmp / "model"
    folder.mkdir()
    write_labels(folder)
    return small_model(folder / "model.keras", carclf_inputs=False)


def text_file(ctx: Context, name: str) -> Path:
    """A file of text under a name that promises something else (weights.h5, note.jpg)."""
    path = ctx.tmp / name
    path.write_text("plain text, not what the name says\n")
    return path


def empty_folder(ctx: Context, name: str) -> Path:
    folder = ctx.tmp / name
    folder.mkdir()
    return folder


def tiny_picture(ctx: Context) -> Path:
    """A 1x1 picture: too small to show a car."""
    from PIL import Image

    path = ctx.tmp / "dot.png"
    Image.new("RGB", (1, 1), (90, 90, 90)).save(path)
    return path


def damaged_run(ctx: Context) -> Path:
    """A folder with a run's file names but not its contents."""
    folder = empty_folder(ctx, "damaged_run")
    for name in ("experiment.json", "dataset.parquet", "trials.parquet"):
        (folder / name).write_text("not what a run writes\n")
    return folder


def outside_file(ctx: Context) -> Callable[[list[dict]], None]:
    shutil.copy(ctx.cars / "cars_train" / "00001.jpg", ctx.tmp / "outside.jpg")
    return set_row(0, file="../outside.jpg")


def training_holds_a_test_image(ctx: Context) -> Path:
    """Training image 1 replaced by test image 1's bytes (and its box, so the box fits)."""
    root = devkit_copy(ctx)
    shutil.copy(root / "cars_test" / "00001.jpg", root / "cars_train" / "00001.jpg")
    box = {key: read_records(root, "cars_test_annos_withlabels.mat")[0][key] for key in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")}
    return edit_records(ctx, lambda records: records[0].update(box))


def missing_fields(records: list[dict]) -> None:
    for record in records:
        del record["bbox_x1"]


def class_spelt_in_lower_case(rows: list[dict]) -> None:
    rows[0]["class"] = "carclf sedan red"  # beside "Carclf Sedan Red" on other lines


# --- the table ----------------------------------------------------------------------------------

SEARCH_ERROR = 2  # tuning.search, carclf.train, tuning.report and an unusable model in carclf.predict
IMAGE_ERROR = 1  # carclf.predict: some image could not be classified
ROWS = r"\d+ of \d+ rows of \S+ have problems:\s+"

CASES = [
    # images (devkit copy, or a CSV dataset)
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: b[: len(b) // 2])), SEARCH_ERROR,
                 ROWS + r"unreadable image: 1 row\(s\) \(cars_train_annos\.mat record 1 \S*cars_train/00001\.jpg: not a readable image",
                 id="image-truncated-jpeg"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: b"this is not a picture\n")), SEARCH_ERROR,
                 r"unreadable image: 1 row\(s\) \(cars_train_annos\.mat record 1 \S*cars_train/00001\.jpg: not a readable image",
                 id="image-text-file-named-jpg"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: b"")), SEARCH_ERROR,
                 r"empty image file: 1 row\(s\) \(cars_train_annos\.mat record 1 \S*cars_train/00001\.jpg: 0 bytes",
                 id="image-zero-bytes"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: None, "cars_test/00002.jpg")), SEARCH_ERROR,
                 r"missing image file: 1 row\(s\) \(cars_test_annos_withlabels\.mat record 2 \S*cars_test/00002\.jpg",
                 id="image-missing-file"),
    pytest.param(lambda ctx: search_csv(ctx, outside_file(ctx)), SEARCH_ERROR,
                 r"file name points outside the dataset root: 1 row\(s\) \(labels\.csv line 2 \S*\.\./outside\.jpg: not under",
                 id="image-csv-path-climbs-out-of-root"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(2, bbox_x2="500", bbox_y2="400")), SEARCH_ERROR,
                 r"bounding box outside the image: 1 row\(s\) \(labels\.csv line 4 \S*train/00003\.jpg: "
                 r"box \(\d+, \d+, 500, 400\) does not fit in the \d+x\d+ image",
                 id="image-csv-box-outside-image"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=edit_records(ctx, lambda r: r[4].update(bbox_x1=30, bbox_x2=30))), SEARCH_ERROR,
                 r"empty bounding box: 1 row\(s\) \(cars_train_annos\.mat record 5 \S*cars_train/00005\.jpg: "
                 r"box \(30, \d+, 30, \d+\) is empty",
                 id="image-devkit-empty-box"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=edit_records(ctx, lambda r: r[2].update(bbox_x1=10, bbox_x2=15))), SEARCH_ERROR,
                 r"too small to show a car: 1 row\(s\) \(cars_train_annos\.mat record 3 \S*cars_train/00003\.jpg: "
                 r"box \(10, \d+, 15, \d+\) is under 8 px on a side",
                 id="image-devkit-box-too-small"),
    # annotations
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: b"MATLAB? no.\n", "devkit/cars_train_annos.mat")),
                 SEARCH_ERROR, r"cars_train_annos\.mat: not a readable MATLAB \.mat file", id="annotations-mat-not-matlab"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=edit_records(ctx, missing_fields)), SEARCH_ERROR,
                 r"cars_train_annos\.mat: annotations lack field\(s\) \['bbox_x1'\]", id="annotations-mat-missing-field"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=damage_image(ctx, lambda b: None, "devkit/cars_meta.mat")), SEARCH_ERROR,
                 r"not a Stanford Cars devkit layout \(need devkit/cars_meta\.mat", id="annotations-devkit-meta-missing"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=edit_records(ctx, lambda r: r[0].update({"class": 9}))), SEARCH_ERROR,
                 r"cars_train_annos\.mat: record 1 \(00001\.jpg\): class 9 is outside 1\.\.4", id="annotations-class-id-out-of-range"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(3, bbox_y1="abc")), SEARCH_ERROR,
                 r"labels\.csv: line 5: bbox_y1 'abc' is not a number", id="annotations-csv-box-not-numeric"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(6, **{"class": ""})), SEARCH_ERROR,
                 r"labels\.csv: line 8: the 'class' cell is empty", id="annotations-csv-blank-class"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(1, bbox_y2="")), SEARCH_ERROR,
                 r"labels\.csv: line 3: bbox_y2 is empty but other box cells are not", id="annotations-csv-partly-empty-box"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(5, split="validation")), SEARCH_ERROR,
                 r"labels\.csv: line 7: split 'validation' is not 'train' or 'test'", id="annotations-csv-bad-split"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(4, **{"class": "NaN"})), SEARCH_ERROR,
                 r"labels\.csv: line 6: the 'class' cell holds 'NaN', which reads as a missing value", id="annotations-csv-nan-class"),
    pytest.param(lambda ctx: search_csv(ctx, set_row(4, **{"class": "None"})), SEARCH_ERROR,
                 r"labels\.csv: line 6: the 'class' cell holds 'None', which reads as a missing value", id="annotations-csv-none-class"),
    pytest.param(lambda ctx: search_csv(ctx, without_rows), SEARCH_ERROR,
                 r"labels\.csv: has a header but no rows", id="annotations-csv-header-only"),
    pytest.param(lambda ctx: search_csv(ctx, lambda rows: rows.append(dict(rows[1]))), SEARCH_ERROR,
                 r"duplicated row: 1 row\(s\) \(labels\.csv line \d+ \S*train/00002\.jpg: the same file and box as labels\.csv line 3",
                 id="annotations-csv-duplicated-row"),
    pytest.param(lambda ctx: search_csv(ctx, class_spelt_in_lower_case), SEARCH_ERROR,
                 r"labels\.csv: 1 class name\(s\) differ only in case or surrounding spaces: "
                 r"'carclf sedan red' \(line 2\) and 'Carclf Sedan Red' \(line \d+\)",
                 id="annotations-csv-class-names-differ-in-case"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=ctx.tmp / "no_such_folder"), SEARCH_ERROR,
                 r"no_such_folder: data folder not found", id="annotations-missing-data-folder"),
    pytest.param(lambda ctx: search_dry_run(ctx, data=training_holds_a_test_image(ctx)), SEARCH_ERROR,
                 r"image also in the test split: 1 row\(s\) \(cars_train_annos\.mat record 1 \S*cars_train/00001\.jpg: "
                 r"the same image as test row cars_test_annos_withlabels\.mat record 1",
                 id="annotations-test-image-also-in-training"),
    # experiments
    pytest.param(lambda ctx: [*search_experiment(ctx, EXPERIMENT), "--experiment", "stanford_carz"], SEARCH_ERROR,
                 r"stanford_carz: experiment file not found, and no shipped experiment has this name \(shipped: demo, stanford_cars\)",
                 id="experiment-unknown-shipped-name"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("[train]\n", "[train\n")), SEARCH_ERROR,
                 r"experiment\.toml: not valid TOML", id="experiment-invalid-toml"),
    pytest.param(lambda ctx: search_experiment(ctx, "# Réglages du démo\n" + EXPERIMENT, encoding="latin-1"), SEARCH_ERROR,
                 r"experiment\.toml: not UTF-8 text \(byte 3 is b'\\xe9'\); TOML files must be UTF-8", id="experiment-latin-1"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT, encoding="utf-16"), SEARCH_ERROR,
                 r"experiment\.toml: not UTF-8 text \(byte 0 is b'\\xff'\)", id="experiment-utf-16"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("loguniform = [0.001, 0.1]", "loguniform = [0.001, inf]")), SEARCH_ERROR,
                 r"experiment\.toml \[search\.space\] learning_rate: loguniform needs finite numbers, got \[0\.001, inf\]",
                 id="experiment-space-bound-inf"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("loguniform = [0.001, 0.1]", "choice = [0.01, nan]")), SEARCH_ERROR,
                 r"experiment\.toml \[search\.space\] learning_rate: choice needs finite numbers, got \[0\.01, nan\]",
                 id="experiment-space-choice-nan"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("momentum = 0.9", "momentum = nan")), SEARCH_ERROR,
                 r"experiment\.toml \[train\]: key 'momentum' must be a finite number, got nan", id="experiment-value-nan"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT + "\n[optimizer]\nname = 'sgd'\n"), SEARCH_ERROR,
                 r"experiment\.toml: unknown table\(s\) \['optimizer'\]", id="experiment-unknown-table"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("momentum = 0.9", "momentom = 0.9")), SEARCH_ERROR,
                 r"experiment\.toml \[train\]: unknown key\(s\) \['momentom'\]", id="experiment-unknown-key"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("momentum = 0.9", 'momentum = "high"')), SEARCH_ERROR,
                 r"experiment\.toml \[train\]: key 'momentum' must be float, got str 'high'", id="experiment-wrong-type"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("validation_fraction = 0.25", "validation_fraction = 1.5")), SEARCH_ERROR,
                 r"experiment\.toml \[data\]: key validation_fraction must be strictly between 0 and 1, got 1\.5",
                 id="experiment-out-of-range"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("unfreeze_depth = { randint = [0, 3] }", "unfreeze_depth = { uniform = [0, 3] }")),
                 SEARCH_ERROR, r"experiment\.toml \[search\.space\] unfreeze_depth: takes whole numbers: use randint",
                 id="experiment-uniform-unfreeze-depth"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("choice = [8, 16]", "choice = [8, 16.5]")), SEARCH_ERROR,
                 r"experiment\.toml \[search\.space\] batch_size: takes whole numbers: a choice of integers, got \[8, 16\.5\]",
                 id="experiment-float-choice-batch-size"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("[search.space]\n", "[search.space]\nepochs = { randint = [1, 4] }\n")),
                 SEARCH_ERROR, r"experiment\.toml \[search\.space\] epochs: not tunable", id="experiment-epochs-in-space"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("[search.space]\n", "[search.space]\nseed = { choice = [0, 1] }\n")),
                 SEARCH_ERROR, r"experiment\.toml \[search\.space\] seed: not tunable", id="experiment-seed-in-space"),
    pytest.param(lambda ctx: search_experiment(ctx, edited('metric = "val_loss"', 'metric = "val_acc"')), SEARCH_ERROR,
                 r"experiment\.toml \[search\]: key metric 'val_acc' is not reported by the trials; they report \[.*'val_accuracy'",
                 id="experiment-misspelt-metric"),
    pytest.param(lambda ctx: search_experiment(ctx, edited('metric = "val_loss"', 'metric = "val_loss"\nmode = "max"')), SEARCH_ERROR,
                 r"experiment\.toml \[search\]: key mode 'max' does not fit metric 'val_loss'", id="experiment-mode-contradicts-metric"),
    pytest.param(lambda ctx: search_experiment(ctx, edited('weights = "none"', f'weights = "{ctx.tmp / "missing.h5"}"')), SEARCH_ERROR,
                 r"missing\.h5: weights file not found", id="experiment-weights-file-missing"),
    pytest.param(lambda ctx: search_experiment(ctx, edited('weights = "none"', f'weights = "{text_file(ctx, "weights.h5")}"')),
                 SEARCH_ERROR,
                 r"weights\.h5: not a Keras weights file \(HDF5\)", id="experiment-weights-file-not-hdf5"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("batch_size = 8\n", "batch_size = 32\n")), SEARCH_ERROR,
                 r"experiment\.toml \[\[search\.start\]\] #1 batch_size: 32 is outside its search space", id="experiment-start-outside-space"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("choice = [8, 16]", "choice = [8, 64]")), SEARCH_ERROR,
                 r"experiment\.toml: a batch size of 64 exceeds the \d+ training images", id="experiment-batch-larger-than-training-set"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT + "\n[[search.start]]\nbatch_size = 8\nlearning_rate = 0.005\n"
                                                          "unfreeze_depth = 0\n"), SEARCH_ERROR,
                 r"experiment\.toml \[\[search\.start\]\] #2: repeats #1", id="experiment-start-point-repeated"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("num_samples = 2", "num_samples = 1")
                                               + "\n[[search.start]]\nbatch_size = 16\nlearning_rate = 0.01\nunfreeze_depth = 1\n"),
                 SEARCH_ERROR, r"experiment\.toml \[search\]: 2 \[\[search\.start\]\] points, but num_samples is 1; each start point "
                               r"is a trial", id="experiment-more-start-points-than-trials"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("learning_rate = { loguniform = [0.001, 0.1] }", "learning_rate = { choice = [0.005] }")
                                               .replace("num_samples = 2", "num_samples = 9")), SEARCH_ERROR,
                 r"experiment\.toml \[search\]: num_samples is 9, but \[search\.space\] holds only 8 different trials and a search "
                 r"never repeats one: lower num_samples to 8", id="experiment-space-smaller-than-num-samples"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT, "--set", "run.retrain='best'"), SEARCH_ERROR,
                 r"\[run\]: key retrain must be one of \('train\+val', 'trial', 'none'\) \(or true, false\), got 'best'",
                 id="experiment-retrain-unknown-choice"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT, "--storage-path", "nosuch://bucket/runs"), SEARCH_ERROR,
                 r"nosuch://bucket/runs/\S+: Unrecognized filesystem type in URI", id="experiment-storage-path-unknown-scheme"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT, "--set", "search.storage='sqlite://'"), SEARCH_ERROR,
                 r"\[search\]: key storage: 'sqlite://' names no SQLite file; an in-memory study would be lost",
                 id="experiment-study-storage-in-memory"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT, "--set", "search.storage='postgresql+nodriver://carclf:secret@db/runs'"),
                 SEARCH_ERROR, r"search\.storage postgresql\+nodriver://carclf:\*\*\*@db/runs: cannot be used \(Can't load plugin: "
                 r"sqlalchemy\.dialects:postgresql\.nodriver\); check the URL", id="experiment-study-storage-cannot-be-used"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("choice = [8, 16]", "choice = [8, 8, 16]")), SEARCH_ERROR,
                 r"experiment\.toml \[search\.space\] batch_size: choice lists 8 more than once", id="experiment-choice-repeated"),
    pytest.param(lambda ctx: search_experiment(ctx, edited("[search.space]\n", "[search.space]\nhead_epochs = { choice = [0, 2] }\n")
                                               .replace("unfreeze_depth = 0\n", "unfreeze_depth = 0\nhead_epochs = 0\n")), SEARCH_ERROR,
                 r"experiment\.toml \[search\.space\] head_epochs: a warm-up of 2 head-only epochs leaves no epoch to fine-tune "
                 r"within scheduler\.max_epochs \(2\)", id="experiment-warm-up-leaves-no-fine-tuning"),
    # flags
    pytest.param(lambda ctx: search_dry_run(ctx, "--resume", str(empty_folder(ctx, "not_a_run"))), SEARCH_ERROR,
                 r"not_a_run: nothing to resume \(no experiment\.json\)", id="flag-resume-folder-without-run"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "train.momentum"), SEARCH_ERROR,
                 r"override 'train\.momentum' must look like section\.key=value", id="flag-set-without-equals"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--gpus-per-trial", "-1"), SEARCH_ERROR,
                 r"\[resources\]: key gpus_per_trial must be >= 0, got -1", id="flag-negative-gpus-per-trial"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--num-samples", "0"), SEARCH_ERROR,
                 r"\[search\]: key num_samples must be >= 1, got 0", id="flag-zero-samples"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "trian.momentum=0.8"), SEARCH_ERROR,
                 r"unknown table\(s\) \['trian'\]", id="flag-set-unknown-table"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "data.image_size=big"), SEARCH_ERROR,
                 r"\[data\]: key 'image_size' must be int, got str 'big'", id="flag-set-wrong-type"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", f"data.cache_dir='{text_file(ctx, 'cachefile')}'"), SEARCH_ERROR,
                 r"\[data\]: key cache_dir: \S*cachefile is a file, not a folder; set data\.cache_dir to a folder", id="flag-cache-dir-is-a-file"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "search.start.0.batch_size=32"), SEARCH_ERROR,
                 r"\[\[search\.start\]\] #1 batch_size: 32 is outside its search space", id="flag-set-into-a-start-point"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "search.start.batch_size=16"), SEARCH_ERROR,
                 r"override 'search\.start\.batch_size=16': search\.start is an array of tables; give the index of one "
                 r"\(search\.start\.0\.batch_size=\.\.\.\) or the whole array", id="flag-set-into-start-points-without-an-index"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "search.start.3.batch_size=8"), SEARCH_ERROR,
                 r"search\.start has 1 table\(s\), indexed 0\.\.0; there is no index 3", id="flag-set-into-a-start-point-not-there"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--num-cpus", "0"), SEARCH_ERROR,
                 r"argument --num-cpus: must be at least 1 \(the CPUs of the local Ray cluster\), got 0", id="flag-num-cpus-zero"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--num-cpus", "1", "--cpus-per-trial", "2"), SEARCH_ERROR,
                 r"--num-cpus 1 cannot host one trial of resources\.cpus_per_trial 2: raise --num-cpus to 2 or more",
                 id="flag-num-cpus-below-a-trial"),
    pytest.param(lambda ctx: [*search_dry_run(ctx), "--num-samples", "many"], SEARCH_ERROR,
                 r"argument --num-samples: invalid int value: 'many'", id="flag-num-samples-not-a-number"),
    # runs that fail before their first trial
    pytest.param(lambda ctx: search_for_real(without_ray_temp_folder(ctx)), SEARCH_ERROR,
                 r"Ray's local cluster did not start: .*no-ray-here.*; no trial ran: the same command starts the run again",
                 id="run-ray-cluster-does-not-start"),
    pytest.param(lambda ctx: kept_run(ctx, study="damaged"), SEARCH_ERROR,
                 r"kept/study\.db: damaged, or not an Optuna study \(.*file is not a database\); restore it from a copy",
                 id="resume-study-db-damaged"),
    pytest.param(lambda ctx: [sys.executable, "-m", "tuning.search", "--resume",
                              str(run_folder_at(ctx, "searched", ("experiment.json", "dataset.parquet")))], SEARCH_ERROR,
                 r"kept: missing trials\.parquet, written when the run was searched; --resume needs them: restore them",
                 id="run-resume-without-trials-file"),
    pytest.param(lambda ctx: [sys.executable, "-m", "tuning.search", "--resume",
                              str(run_folder_at(ctx, "started", ("experiment.json", "dataset.parquet"), status="{\"stage\": "))],
                 SEARCH_ERROR, r"kept/status\.json: damaged \(.*\); it says how far the run got", id="run-status-file-damaged"),
    # hardening, fourth round: runs resumed, refused before Ray starts when the folder is not one run
    pytest.param(lambda ctx: kept_run(ctx, state="another"), SEARCH_ERROR,
                 r"kept/ray/searcher-state-\S+\.pkl: belongs to another run \(run id ba9876543210, from \S*experiment\.toml\), not "
                 r"to this one \(0123456789ab\): restore it from a copy of the run folder", id="resume-searcher-state-of-another-run"),
    pytest.param(lambda ctx: kept_run(ctx, study="another"), SEARCH_ERROR,
                 r"kept/study\.db: belongs to another run \(run id ba9876543210, from \S*experiment\.toml\), not to this one "
                 r"\(0123456789ab\): restore it from a copy of the run folder", id="resume-study-of-another-run"),
    pytest.param(lambda ctx: kept_run(ctx, "search.num_samples=9"), SEARCH_ERROR,
                 r"kept/experiment\.json: changed since the run started: it no longer reads as the experiment its searcher-state-\S+ was made for",
                 id="resume-experiment-json-edited-after-the-start"),
    pytest.param(lambda ctx: kept_run(ctx, "search.num_samples=9", state="none", study="this", storage=str(ctx.tmp / "studies.log")),
                 SEARCH_ERROR, r"kept/experiment\.json: changed since the run started: it no longer reads as the experiment its study "
                 r"\(search\.storage \S+/studies\.log\) was made for", id="resume-experiment-json-edited-after-its-study-in-a-journal"),
    pytest.param(lambda ctx: kept_run(ctx, experiment_json='{"run_id": "0123456789ab", "data": {"form'), SEARCH_ERROR,
                 r"kept/experiment\.json: damaged \(.*\); restore it from a copy of the run folder", id="resume-experiment-json-truncated"),
    pytest.param(lambda ctx: kept_run(ctx, rungs=RUNG + "garbage\n"), SEARCH_ERROR,
                 r"kept/rungs\.jsonl: damaged \(line 2 is not one of ASHA's rung decisions: 'garbage'\); restore it", id="resume-rungs-garbage-line"),
    pytest.param(lambda ctx: kept_run(ctx, rungs=RUNG.replace("0123456789ab", "ba9876543210")), SEARCH_ERROR,
                 r"kept/rungs\.jsonl: decision 1 belongs to another run \(run id ba9876543210, not 0123456789ab\)",
                 id="resume-rungs-of-another-run"),
    # train
    pytest.param(lambda ctx: train(ctx, edited("momentum = 0.9", "momentom = 0.9")), SEARCH_ERROR,
                 r"experiment\.toml \[train\]: unknown key\(s\) \['momentom'\]", id="train-unknown-key"),
    pytest.param(lambda ctx: [*train(ctx), "--experiment", str(ctx.tmp / "nowhere.toml")], SEARCH_ERROR,
                 r"nowhere\.toml: experiment file not found", id="train-missing-experiment"),
    pytest.param(lambda ctx: [sys.executable, "-m", "carclf.train", "--output", str(ctx.tmp / "model.keras")], SEARCH_ERROR,
                 r"the following arguments are required: --experiment", id="train-without-experiment"),
    pytest.param(lambda ctx: train(ctx, EXPERIMENT, "--output", str(ctx.tmp / "model.h5")), SEARCH_ERROR,
                 r"--output \S*model\.h5: model files must end in \.keras", id="train-output-not-keras"),
    pytest.param(lambda ctx: train(ctx, data=damage_image(ctx, lambda b: b"")), SEARCH_ERROR,
                 r"empty image file: 1 row\(s\) \(cars_train_annos\.mat record 1 \S*cars_train/00001\.jpg: 0 bytes",
                 id="train-zero-byte-image"),
    # predict
    pytest.param(lambda ctx: predict(ctx, "--top-k", "0", tiny_image(ctx)), SEARCH_ERROR,
                 r"--top-k must be at least 1, got 0", id="predict-top-k-zero"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, ["a", "b", "c"])), SEARCH_ERROR,
                 r"labels\.json: names 3 classes, but model\.keras has 4 outputs", id="predict-labels-count-differs"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, ["a", "b", "c", "b"])), SEARCH_ERROR,
                 r"model/labels\.json: class_names\[1\] and class_names\[3\] are both 'b'; each output needs a name of its own: "
                 r"restore the labels\.json carclf saved with this model", id="predict-labels-duplicate-class"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, ["a", "b", 3, "d"])), SEARCH_ERROR,
                 r"model/labels\.json: class_names\[2\] is 3, not a class name \(a string\); restore the labels\.json",
                 id="predict-labels-not-strings"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, ["a", None, "c", "d"])), SEARCH_ERROR,
                 r"model/labels\.json: class_names\[1\] is null, not a class name", id="predict-labels-null-name"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, ["a", "b", "c", ["d", "e"]])), SEARCH_ERROR,
                 r"model/labels\.json: class_names\[3\] is \[\"d\", \"e\"\], not a class name", id="predict-labels-nested-list"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, FOLDER)), SEARCH_ERROR,
                 r"model/labels\.json: a folder, where carclf expects the model's class names; remove it and put the labels\.json",
                 id="predict-labels-json-is-a-folder"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, config=FOLDER)), SEARCH_ERROR,
                 r"model/config\.json: a folder, where carclf expects the model's config file \(the settings it trained with\); "
                 r"remove it and put the config\.json saved with the model there",
                 id="predict-config-json-is-a-folder"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, config=config_with(image_size=64))), SEARCH_ERROR,
                 r"model/config\.json: settings\.data\.image_size is 64, but model\.keras takes 32x32 crops: the settings belong to "
                 r"another model; copy model\.keras, labels\.json and config\.json of one training run together",
                 id="predict-model-and-config-image-size-differ"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=ctx.tmp / "gone" / "model.keras"), SEARCH_ERROR,
                 r"gone/model\.keras: model file not found", id="predict-missing-model"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_file(ctx, lambda b: b"not a model\n")), SEARCH_ERROR,
                 r"model\.keras: damaged, or not a \.keras model: not a zip archive \(12 bytes\)", id="predict-model-not-keras"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_file(ctx, lambda b: b"")), SEARCH_ERROR,
                 r"model\.keras: damaged, or not a \.keras model: not a zip archive \(0 bytes\)", id="predict-model-zero-bytes"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_file(ctx, lambda b: b[: len(b) // 2])), SEARCH_ERROR,
                 r"model\.keras: damaged, or not a \.keras model: not a zip archive", id="predict-model-truncated"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=zip_without_config(ctx)), SEARCH_ERROR,
                 r"model\.keras: damaged, or not a \.keras model: .*config\.json", id="predict-model-zip-without-config"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=empty_folder(ctx, "best")), SEARCH_ERROR,
                 r"best: a folder, not a model file; give the \.keras file carclf saved in it \(e\.g\. \S*best/model\.keras\)",
                 id="predict-model-is-a-folder"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_file(ctx, lambda b: b, labels=False)), SEARCH_ERROR,
                 r"model/labels\.json: labels\.json not found beside the model; carclf saves the class names there",
                 id="predict-model-without-labels"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=foreign_model(ctx)), SEARCH_ERROR,
                 r"model\.keras: not a carclf classifier: expected a uint8 \(size, size, 3\) image input, got float32 \(32, 32, 3\)",
                 id="predict-model-not-made-by-carclf"),
    pytest.param(lambda ctx: predict(ctx, f"{tiny_image(ctx)}@0,0,5000,5000"), IMAGE_ERROR,
                 r"cars_test/00001\.jpg: box \(0, 0, 5000, 5000\) does not fit in the \d+x\d+ image", id="predict-box-outside-image"),
    pytest.param(lambda ctx: predict(ctx, f"{tiny_image(ctx)}@1,2,3"), IMAGE_ERROR,
                 r"cars_test/00001\.jpg: box '1,2,3' must be four whole numbers x1,y1,x2,y2", id="predict-malformed-box"),
    pytest.param(lambda ctx: predict(ctx, str(ctx.tmp / "nothing.jpg")), IMAGE_ERROR,
                 r"nothing\.jpg: file not found", id="predict-missing-image"),
    pytest.param(lambda ctx: predict(ctx, str(empty_folder(ctx, "photos"))), IMAGE_ERROR,
                 r"photos: a folder, not an image file; give the image files in it \(e\.g\. \S*photos/\*\.jpg\)",
                 id="predict-image-is-a-folder"),
    pytest.param(lambda ctx: predict(ctx, str(text_file(ctx, "note.jpg"))), IMAGE_ERROR,
                 r"note\.jpg: not a readable image", id="predict-text-file-named-jpg"),
    pytest.param(lambda ctx: predict(ctx, str(tiny_picture(ctx))), IMAGE_ERROR,
                 r"dot\.png: the 1x1 image is under 8 px on a side", id="predict-image-too-small"),
    # report
    pytest.param(lambda ctx: report(ctx, empty_folder(ctx, "not_a_run")), SEARCH_ERROR,
                 r"not_a_run: not a finished run folder \(missing experiment\.json, dataset\.parquet, trials\.parquet\)",
                 id="report-folder-not-a-run"),
    pytest.param(lambda ctx: report(ctx, ctx.tmp / "no_such_run"), SEARCH_ERROR,
                 r"no_such_run: not a finished run folder", id="report-missing-folder"),
    pytest.param(lambda ctx: report(ctx, damaged_run(ctx)), SEARCH_ERROR,
                 r"damaged_run/experiment\.json", id="report-run-files-damaged"),
]


def run(command: list[str]) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` as `MODULE.main(ARGS)`: its exit status and what it printed.

    An exception that escapes `main` is printed as Python would print it, traceback included.
    """
    assert command[:2] == [sys.executable, "-m"], command
    main = importlib.import_module(command[2]).main
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(command[3:])
        except SystemExit as exit:  # argparse's refusals
            status = exit.code if isinstance(exit.code, int) else 1
        except Exception:
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


@pytest.mark.parametrize(("build", "status", "expected"), CASES)
def test_bad_input_is_refused_naming_the_culprit(build, status, expected, tiny_cars, tmp_path, request):
    command = build(Context(tmp_path, tiny_cars, request))
    result = run(command)
    shown = f"$ {' '.join(command)}\nexit {result.returncode}\nstderr:\n{result.stderr[-3000:]}\nstdout:\n{result.stdout[-1500:]}"
    assert result.returncode != 0, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == status, shown
    assert re.search(expected, result.stderr), f"expected /{expected}/ on stderr\n{shown}"


CONTROLS = [
    pytest.param(lambda ctx: search_dry_run(ctx, data=devkit_copy(ctx)), id="search-devkit-copy"),
    pytest.param(lambda ctx: search_csv(ctx), id="search-csv-dataset"),
    pytest.param(lambda ctx: search_experiment(ctx, EXPERIMENT), id="search-experiment-file"),
    pytest.param(lambda ctx: search_dry_run(ctx, "--set", "data.format='folders'", data=folder_dataset(ctx)),
                 id="search-folders-with-hidden-and-unread-files"),
    pytest.param(lambda ctx: predict(ctx, "--top-k", "2", f"{tiny_image(ctx)}@1,1,40,40"), id="predict-image-with-box"),
    pytest.param(lambda ctx: predict(ctx, tiny_image(ctx), model=model_with(ctx, config=config_with(bbox_margin=0.1))),
                 id="predict-model-with-its-config"),
]


@pytest.mark.parametrize("build", CONTROLS)
def test_the_undamaged_inputs_pass(build, tiny_cars, tmp_path, request):
    """The bad cases' starting points are valid: each bad case fails because of its damage alone."""
    command = build(Context(tmp_path, tiny_cars, request))
    result = run(command)
    assert result.returncode == 0, f"$ {' '.join(command)}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stdout + result.stderr


def test_a_start_that_failed_before_its_first_trial_keeps_no_name(tiny_cars, tmp_path, request):
    """The same command, run again after Ray failed to start, starts the run again: it is not refused as
    "a run with this name exists", and the study of the failed start is not reused."""
    ctx = without_ray_temp_folder(Context(tmp_path, tiny_cars, request))
    first = run(search_for_real(ctx))
    assert first.returncode == SEARCH_ERROR and "did not start" in first.stderr
    assert json.loads((ctx.runs / "bad" / "status.json").read_text())["stage"] == "started"
    (ctx.runs / "bad" / "study.db").write_bytes(b"")  # what a start that got further leaves
    again = run(search_for_real(ctx))
    assert again.returncode == SEARCH_ERROR and "a run with this name exists" not in again.stderr, again.stderr[-2000:]
    assert "Ray's local cluster did not start" in again.stderr and not (ctx.runs / "bad" / "study.db").exists()


def test_predict_with_a_model_trained_on_whole_pictures_ignores_a_box_and_says_so(tiny_cars, tmp_path, request):
    """config.json says crop_to_bbox false: a box given is not used (the answer is the whole picture's), --json says
    so (`box` null, the argument kept in `input`) and stderr says why, once, in text and JSON output alike. The box
    changes the answer of a model that crops to boxes, so an answer that ignores it is no accident."""
    ctx = Context(tmp_path, tiny_cars, request)
    image, whole_pictures = tiny_image(ctx), model_with(ctx, config=config_with(crop_to_bbox=False))
    boxed = f"{image}@1,1,40,40"
    note = (f"note: {whole_pictures.parent / 'config.json'}: the model was trained on whole pictures (settings.data.crop_to_bbox "
            "is false), so the boxes given are ignored: each picture is classified whole\n")
    answers = run(predict(ctx, "--json", "--top-k", "4", boxed, image, boxed, model=whole_pictures))
    assert answers.returncode == 0 and answers.stderr.count(note) == 1, answers.stderr
    first, whole, again = (json.loads(line) for line in answers.stdout.splitlines())
    assert (first["input"], first["box"], whole["box"]) == (boxed, None, None)
    for answer in (whole, again):  # the same answer, up to the float rounding of a picture's place in the batch
        assert [t["class_name"] for t in answer["top"]] == [t["class_name"] for t in first["top"]]
        assert [t["probability"] for t in answer["top"]] == pytest.approx([t["probability"] for t in first["top"]], rel=1e-4, abs=1e-9)
    text = run(predict(ctx, boxed, model=whole_pictures))
    assert text.returncode == 0 and text.stderr.count(note) == 1 and text.stdout.startswith(f"{boxed}\n  1. "), text.stderr
    cropping = [json.loads(line) for line in run(predict(ctx, "--json", "--top-k", "4", boxed, image)).stdout.splitlines()]
    assert cropping[0]["box"] == [1, 1, 40, 40] and cropping[0]["top"] != cropping[1]["top"]
