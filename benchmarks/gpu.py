"""GPU benchmark: carclf's trial path against the bare model, and a real search packed 1 and 4 trials per GPU.

    KERAS_BACKEND=jax python benchmarks/gpu.py --out results/    # on a GPU machine (JAX or TensorFlow)
    python benchmarks/gpu.py --tiny --out results/               # the same script at a tiny size, on a CPU

a. Throughput at 224 px (--tiny: 32 px), full fine-tuning and unfreeze depth 3, float32 and mixed
   bfloat16, batch 128 and 256: the trial path (decoded store -> `TrainingBatches` -> the classifier
   with its augmentation layers, through Keras' `fit`) beside the ceiling (the same model's train
   step on one batch already on the device).
b. A real search on a synthetic dataset the size of Stanford Cars (196 classes, 8,144 training and
   validation images, 224 px): 16 trials, ASHA up to 8 epochs, once at 1 trial per GPU and once at
   4, with the wall time of each phase (decoding, features, trials, retraining, evaluation), each
   trial's compile seconds (its first epoch minus its later ones), checkpoint bytes and seconds, and
   the GPU's busy fraction during the trials (nvidia-smi sampled every 0.5 s).
Writes `gpu.json` and `gpu.md` (markdown tables) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def throughput(size: int, depth: int, precision: str, batch: int, steps: int, images: int, store_dir: Path) -> dict:
    """Images/s of the trial path and of the ceiling for one setting, in this process."""
    import keras

    from carclf.config import DataConfig, ModelConfig, TrainConfig
    from carclf.data.batches import TrainingBatches
    from carclf.model import build_classifier, compile_classifier

    keras.utils.clear_session()  # resets the dtype policy too: build_classifier sets its own
    store = store_dir / f"store-{size}.npy"
    if not store.exists():
        np.save(store, np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8))
    pixels = np.load(store, mmap_mode="r")
    labels = np.random.default_rng(1).integers(0, 196, images)
    model = compile_classifier(build_classifier(196, DataConfig(image_size=size), ModelConfig(weights="none"), depth, 0, precision),
                               TrainConfig(batch_size=batch))
    batches = TrainingBatches(lambda rows, rng: pixels[rows], np.arange(images), labels, batch, steps * batch, 0, workers=4)
    model.fit(batches, epochs=1, verbose=0)  # compiles
    started = time.perf_counter()
    model.fit(batches, epochs=2, initial_epoch=1, verbose=0)
    path = steps * batch / (time.perf_counter() - started)
    x = keras.ops.convert_to_tensor(pixels[:batch])
    y = keras.ops.convert_to_tensor(labels[:batch])
    model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        logs = model.train_on_batch(x, y, return_dict=True)
    float(logs["loss"])  # wait for the device
    ceiling = steps * batch / (time.perf_counter() - started)
    return {"px": size, "depth": depth, "precision": precision, "batch": batch, "trial_path": path, "ceiling": ceiling,
            "ratio": path / ceiling}


class GpuSampler:
    """nvidia-smi's utilization every 0.5 s in the background; `busy()` is the mean fraction (None without nvidia-smi)."""

    def __init__(self, log: Path):
        self.log, self.process = log, None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                             "-lms", "500"], stdout=log.open("w"), stderr=subprocess.DEVNULL)

    def busy(self) -> float | None:
        if self.process is None:
            return None
        self.process.terminate()
        self.process.wait()
        values = [float(line) for line in self.log.read_text().split() if line.strip().replace(".", "").isdigit()]
        return statistics.mean(values) / 100 if values else None


def search(folder: Path, packed: int, tiny: bool, gpus: bool) -> dict:
    """One real search through the CLI; its phases, compile seconds, checkpoints and GPU busy fraction."""
    from carclf.data.synthetic import SyntheticSpec, generate_synthetic_cars

    spec = (SyntheticSpec(num_classes=10, train_per_class=16, test_per_class=4) if tiny
            else SyntheticSpec(num_classes=196, train_per_class=42, test_per_class=41, width_range=(600, 800), height_range=(400, 520)))
    root = generate_synthetic_cars(folder / "data", spec)
    name = f"packed{packed}"
    batch_sizes = "[8, 16]" if tiny else "[64, 128]"
    settings = ["--set", "data.format='devkit'", "--set", f"data.image_size={32 if tiny else 224}", "--set", "model.weights='none'",
                "--set", f"search.num_samples={4 if tiny else 16}", "--set", f"search.max_concurrent={packed}",
                "--set", f"scheduler.max_epochs={2 if tiny else 8}", "--set", "scheduler.grace_period=1",
                "--set", "scheduler.reduction_factor=2", "--set", "search.space.unfreeze_depth={ randint = [0, 16] }",
                "--set", "search.space.head_epochs={ choice = [0, 1] }",  # a warm-up must leave epochs to fine-tune
                "--set", f"search.space.batch_size={{ choice = {batch_sizes} }}", "--set", "search.start=[]"]
    if gpus:
        settings += ["--gpus-per-trial", str(1 / packed), "--cpus-per-trial", str(max(1, (os.cpu_count() or 4) // packed - 1))]
    else:
        settings += ["--cpus-per-trial", "1"]
    sampler = GpuSampler(folder / f"{name}.gpu.log")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuning.search", "--data-dir", str(root), "--storage-path", str(folder / "runs"),
                    "--name", name, "--no-dashboard", *settings], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    busy = sampler.busy()
    import pandas as pd

    run_dir = folder / "runs" / name
    timing = json.loads((run_dir / "search.json").read_text())
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet").dropna(subset=["epoch"])
    later = trials[trials["epoch"] > 1].groupby("trial_id")["seconds_per_epoch"].median()
    first = trials[trials["epoch"] == 1].set_index("trial_id")["seconds_per_epoch"]
    compile_s = (first - later.reindex(first.index).fillna(later.median())).dropna()
    checkpoints = trials.dropna(subset=["checkpoint_bytes"]) if "checkpoint_bytes" in trials else trials.iloc[:0]
    return {"trials_per_gpu": packed, "wall_s": wall, "prepare_s": timing["prepare_s"], "features_s": timing["features_s"],
            "trials_s": timing["trials_s"], "retrain_s": metrics["retrain_s"], "evaluate_s": metrics["evaluate_s"],
            "compile_s_median": float(compile_s.median()) if len(compile_s) else None,
            "checkpoint_mb_median": float(checkpoints["checkpoint_bytes"].median() / 2**20) if len(checkpoints) else None,
            "checkpoint_share_of_trial_time": float(checkpoints["checkpoint_seconds"].sum() / trials["seconds_per_epoch"].sum())
            if len(checkpoints) else None,
            "gpu_busy": busy, "test_accuracy": metrics["test"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--tiny", action="store_true", help="32 px and a few images: proves the script on a CPU")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import keras

    from carclf.runtime import configure_process, gpu_compute_capability

    configure_process(None, seed=0)
    gpus = gpu_compute_capability() is not None
    size, steps, images = (32, 3, 512) if args.tiny else (224, 20, 4096)
    results: dict = {"backend": keras.backend.backend(), "gpu": gpus, "date": time.strftime("%Y-%m-%d"), "throughput": []}
    precisions = ["float32", "mixed_bfloat16"] if gpus else ["float32"]
    with tempfile.TemporaryDirectory() as folder:
        for depth in (16, 3):
            for precision in precisions:
                for batch in ((16, 32) if args.tiny else (128, 256)):
                    results["throughput"].append(throughput(size, depth, precision, batch, steps, images, Path(folder)))
                    print(json.dumps(results["throughput"][-1]), flush=True)
        if not args.skip_search:
            results["search"] = [search(Path(folder) / f"search{packed}", packed, args.tiny, gpus) for packed in (1, 4)]
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    lines = [f"backend {results['backend']}, {'GPU' if gpus else 'CPU only'}, {results['date']}", "",
             "| px | depth | precision | batch | trial path images/s | ceiling images/s | ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['px']} | {r['depth']} | {r['precision']} | {r['batch']} | {r['trial_path']:,.0f} | {r['ceiling']:,.0f} | {r['ratio']:.2f} |"
              for r in results["throughput"]]
    if "search" in results:
        lines += ["", "| trials per GPU | wall s | decode s | features s | trials s | retrain s | evaluate s | compile s (median) | "
                      "checkpoint MB | checkpoint share | GPU busy | test accuracy |", "| --- " * 12 + "|"]
        for r in results["search"]:
            cells = [r["trials_per_gpu"], r["wall_s"], r["prepare_s"], r["features_s"], r["trials_s"], r["retrain_s"], r["evaluate_s"],
                     r["compile_s_median"], r["checkpoint_mb_median"], r["checkpoint_share_of_trial_time"], r["gpu_busy"], r["test_accuracy"]]
            lines.append("| " + " | ".join("n/a" if c is None else f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells) + " |")
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
