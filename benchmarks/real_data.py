"""A real image dataset, offline: scikit-learn's digits, and baselines on one fixed test split.

    python benchmarks/real_data.py [--root DIR] [--only svm keras recipe synthetic] [--code DIR]

The data ships inside the scikit-learn package (`sklearn.datasets.load_digits`: 1,797 grey 8x8
images of handwritten digits, 10 classes); nothing is downloaded. `write_digits(root)` writes it
once as `root/train/<digit>/*.png` (1,437 images) and `root/test/<digit>/*.png` (360 images): a
stratified split, `train_test_split(test_size=360, stratify=y, random_state=0)`. Each image's
pixel values 0..16 are scaled to 0..255 (rounded), the 8x8 image is upscaled to 32x32 with
Pillow's BILINEAR filter and saved as RGB (three equal channels). `root/manifest.json` marks a
finished write; a second call with the same settings returns at once.

Baselines, each scored on the same 360 test images, with the binomial standard error
sqrt(p (1 - p) / 360):
- svm: scikit-learn SVC(kernel="rbf") on the 32x32 PNG pixels (one channel, /255): default
  C=1, gamma="scale", and lightly tuned (5-fold CV over C in 1, 10, 100 and gamma in "scale",
  0.5x, 2x "scale"); also on the original 8x8 values (64 features, /16), default settings;
- keras: plain Keras, no carclf: ResNet50(weights=None, include_top=False, 32x32x3, avg pool) +
  Dense(10, softmax), SGD(0.005, momentum 0.9), sparse categorical cross-entropy, 8 epochs of
  batch 32 on the 1,437 training images scaled to x/127.5 - 1, seed 0;
- recipe: carclf's fixed starting recipe through `python -m carclf.train` (random weights,
  batch 32, lr 0.005, decay 1e-4, momentum 0.9, depth 16, 8 epochs, float32; 20 % of the
  training images held out for validation, carclf's default rotation augmentation of 20 degrees,
  no flip), then its saved model on the test images (`carclf.data.images.load_crop` crops);
- synthetic: the same recipe from carclf's own synthetic backbone (weights="synthetic"), at
  unfreeze depth 16 and 0.

`--code DIR` puts DIR first on PYTHONPATH for the carclf commands (a frozen copy of the code).
Writes (merges into) `real_data.json` in the current folder: every figure, the date, the seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

TEST_SIZE = 360
IMAGE_SIZE = 32
SPLIT_SEED = 0
RESIZE = "bilinear"
MANIFEST = "manifest.json"
DEFAULT_ROOT = "digits"  # in the current folder
EPOCHS = 8


def write_digits(root: str | Path) -> Path:
    """Write scikit-learn's digits as class folders under `root` (once); return `root`."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    settings = {"dataset": "sklearn.datasets.load_digits", "test_size": TEST_SIZE, "split_seed": SPLIT_SEED,
                "stratified": True, "image_size": IMAGE_SIZE, "resize": RESIZE, "scale": "round(v * 255 / 16)", "mode": "RGB"}
    manifest = root / MANIFEST
    if manifest.is_file():
        written = json.loads(manifest.read_text())
        if written.get("settings") == settings:
            return root
        raise RuntimeError(f"{root}: holds digits written with other settings ({written.get('settings')}); remove it first")
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"{root}: exists, is not empty and has no {MANIFEST}; remove it or choose another --root")
    digits = load_digits()
    images, labels = digits.images, digits.target
    positions = np.arange(len(labels))
    train, test = train_test_split(positions, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED)
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        import shutil
        shutil.rmtree(partial)
    counts = {}
    for split, chosen in (("train", train), ("test", test)):
        for position in sorted(chosen):
            pixels = np.rint(images[position] * 255.0 / 16.0).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")
            folder = partial / split / str(labels[position])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{position:04d}.png")
        counts[split] = len(chosen)
    (partial / MANIFEST).write_text(json.dumps({"settings": settings, "counts": counts,
                                                "test_positions": sorted(int(p) for p in test)}, indent=1))
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()
    partial.rename(root)
    return root


def read_split(root: Path, split: str):
    """The PNGs of one split as uint8 (n, 32, 32, 3), their digit labels and their paths (sorted)."""
    import numpy as np
    from PIL import Image

    paths = sorted((root / split).glob("*/*.png"))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])
    return pixels, np.array([int(p.parent.name) for p in paths]), paths


def standard_error(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n)


def scored(accuracy: float, n: int, seconds: float, **details) -> dict:
    return {"test_accuracy": accuracy, "standard_error": standard_error(accuracy, n), "n_test": n,
            "seconds": round(seconds, 1), **details}


def baseline_svm(root: Path) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    results = {}
    x_train, y_train, _ = read_split(root, "train")
    x_test, y_test, test_paths = read_split(root, "test")
    flat_train = x_train[..., 0].reshape(len(x_train), -1) / 255.0
    flat_test = x_test[..., 0].reshape(len(x_test), -1) / 255.0
    started = time.perf_counter()
    model = SVC(kernel="rbf").fit(flat_train, y_train)
    results["svm_32px_default"] = scored(float((model.predict(flat_test) == y_test).mean()), len(y_test),
                                         time.perf_counter() - started, features="32x32 PNG pixels /255 (1024)", C=1.0, gamma="scale")
    started = time.perf_counter()
    scale = 1.0 / (flat_train.shape[1] * flat_train.var())
    grid = GridSearchCV(SVC(kernel="rbf"), {"C": [1, 10, 100], "gamma": [scale / 2, scale, scale * 2]}, cv=5)
    grid.fit(flat_train, y_train)
    results["svm_32px_tuned"] = scored(float((grid.predict(flat_test) == y_test).mean()), len(y_test), time.perf_counter() - started,
                                       features="32x32 PNG pixels /255 (1024)", C=grid.best_params_["C"],
                                       gamma=float(grid.best_params_["gamma"]), gamma_over_scale=grid.best_params_["gamma"] / scale,
                                       cv_accuracy=float(grid.best_score_))
    # The original 8x8 values, on exactly the same split (the file names are the dataset positions).
    digits = load_digits()
    test_positions = sorted(int(p.stem) for p in test_paths)
    train_positions = sorted(set(range(len(digits.target))) - set(test_positions))
    started = time.perf_counter()
    model = SVC(kernel="rbf").fit(digits.data[train_positions] / 16.0, digits.target[train_positions])
    accuracy = float((model.predict(digits.data[test_positions] / 16.0) == digits.target[test_positions]).mean())
    results["svm_8px_default"] = scored(accuracy, len(test_positions), time.perf_counter() - started,
                                        features="original 8x8 values /16 (64)", C=1.0, gamma="scale")
    return results


def baseline_keras(root: Path) -> dict:
    """Plain Keras, no carclf (run in a child process: see `main`)."""
    import keras

    keras.utils.set_random_seed(0)
    x_train, y_train, _ = read_split(root, "train")
    x_test, y_test, _ = read_split(root, "test")
    scale = lambda x: x.astype("float32") / 127.5 - 1.0  # noqa: E731
    backbone = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), pooling="avg")
    model = keras.Sequential([keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)), backbone, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.005, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(scale(x_train), y_train, epochs=EPOCHS, batch_size=32, verbose=2)
    seconds = time.perf_counter() - started
    predictions = model.predict(scale(x_test), batch_size=128, verbose=0).argmax(axis=1)
    accuracy = float((predictions == y_test).mean())
    return {"keras": scored(accuracy, len(y_test), seconds, train_images=len(y_train), epochs=EPOCHS,
                            train_accuracy_per_epoch=[round(float(v), 4) for v in history.history["accuracy"]],
                            keras_version=keras.__version__, backend=keras.backend.backend())}


def evaluate_model(model_path: Path, root: Path) -> dict:
    """A saved carclf model on the test PNGs, through `carclf.data.images.load_crop` (child process)."""
    import keras
    import numpy as np

    import carclf  # noqa: F401  (registers carclf's Keras objects)
    from carclf.data.images import load_crop

    names = json.loads(model_path.with_name("labels.json").read_text())["class_names"]
    paths = sorted((root / "test").glob("*/*.png"))
    crops = np.stack([load_crop(p, None, IMAGE_SIZE) for p in paths])
    truth = np.array([names.index(p.parent.name) for p in paths])
    model = keras.models.load_model(model_path)
    predictions = np.asarray(model.predict(crops, batch_size=128, verbose=0)).argmax(axis=1)
    return {"test_accuracy": float((predictions == truth).mean()), "n_test": len(truth), "carclf_file": carclf.__file__}


RECIPE = """[data]
format = "folders"
root = "{root}"
image_size = 32
horizontal_flip = false
validation_fraction = 0.2
cache_dir = "{cache}"
[model]
weights = "{weights}"
[train]
batch_size = 32
learning_rate = 0.005
lr_decay = 0.0001
momentum = 0.9
unfreeze_depth = {depth}
epochs = {epochs}
precision = "float32"
"""


def child_env(code: str | None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_HOME": str(Path("keras_home").resolve())}
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_child(arguments: list[str], env: dict, log: Path) -> dict:
    """Run this script as a child (`--child ...`); its last stdout line is its JSON result."""
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, __file__, *arguments], env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
    handle_text = done.stdout.strip().splitlines()
    with log.open("a") as handle:
        handle.write(done.stdout)
    if done.returncode != 0 or not handle_text:
        raise RuntimeError(f"child {' '.join(arguments)} failed (exit {done.returncode}); see {log}")
    return json.loads(handle_text[-1])


def baseline_recipe(root: Path, weights: str, depth: int, code: str | None, work: Path) -> dict:
    name = f"recipe_{weights}_depth{depth}"
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    experiment = folder / "recipe.toml"
    experiment.write_text(RECIPE.format(root=root.resolve(), cache=cache.resolve(), weights=weights, depth=depth, epochs=EPOCHS))
    model_path = folder / "model.keras"
    env = child_env(code)
    started = time.perf_counter()
    command = [sys.executable, "-m", "carclf.train", "--experiment", str(experiment), "--set", f"data.cache_dir='{cache.resolve()}'",
               "--output", str(model_path)]
    with (folder / "train.log").open("w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    train_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); see {folder / 'train.log'}")
    result = run_child(["--child", "evaluate", "--model", str(model_path), "--root", str(root)], env, folder / "evaluate.log")
    accuracy = result["test_accuracy"]
    return {name: scored(accuracy, result["n_test"], train_seconds, weights=weights, unfreeze_depth=depth, epochs=EPOCHS,
                         command=" ".join(command), carclf_file=result["carclf_file"],
                         val_accuracy_per_epoch=_val_accuracies(folder / "train.log"),
                         note="seconds include the process start and, for weights=synthetic on a fresh cache, the backbone's pretraining")}


def _val_accuracies(log: Path) -> list[float]:
    """Keras' progress lines print `val_accuracy: 0.xxxx` at each epoch's end."""
    import re
    return [float(v) for v in re.findall(r"val_accuracy: ([0-9.]+)", log.read_text().replace("\r", "\n"))][-EPOCHS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"where the digits go (default {DEFAULT_ROOT})")
    parser.add_argument("--only", nargs="+", choices=["svm", "keras", "recipe", "synthetic"], default=["svm", "keras", "recipe", "synthetic"])
    parser.add_argument("--code", help="put this folder first on PYTHONPATH for the carclf commands")
    parser.add_argument("--work", default="real_data_work", help="folder for experiment files, models, logs, caches")
    parser.add_argument("--out", default="real_data.json")
    parser.add_argument("--child", choices=["keras", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.root)
    if args.child == "keras":
        print(json.dumps(baseline_keras(root)))
        return
    if args.child == "evaluate":
        print(json.dumps(evaluate_model(Path(args.model), root)))
        return
    write_digits(root)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.is_file() else {"results": {}}
    document.update({"dataset": json.loads((root / MANIFEST).read_text())["settings"], "root": str(root.resolve())})

    def record(results: dict, started: float) -> None:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        for name, result in results.items():
            document["results"][name] = {**result, "date": stamp, "wall_seconds": round(time.perf_counter() - started, 1)}
            print(f"{name}: test accuracy {result['test_accuracy']:.4f} ± {result['standard_error']:.4f} "
                  f"(n={result['n_test']}, {result['seconds']} s)", flush=True)
        out.write_text(json.dumps(document, indent=2))

    for what in args.only:
        started = time.perf_counter()
        try:
            if what == "svm":
                record(baseline_svm(root), started)
            elif what == "keras":
                record(run_child(["--child", "keras", "--root", str(root)], child_env(None), work / "keras.log"), started)
            elif what == "recipe":
                record(baseline_recipe(root, "none", 16, args.code, work), started)
            elif what == "synthetic":
                for depth in (16, 0):
                    record(baseline_recipe(root, "synthetic", depth, args.code, work), time.perf_counter())
        except RuntimeError as error:
            print(f"{what}: FAILED: {error}", flush=True)
            document.setdefault("failures", {})[what] = str(error)
            out.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
