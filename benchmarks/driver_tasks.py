"""Work done once (backbone pretraining, head features, transfer probe, retraining) with one trial's CPUs against a whole node.

    python benchmarks/driver_tasks.py [--backbone-images 20 --backbone-epochs 2]

On a local Ray cluster of all this machine's CPUs and the demo's data, each task runs twice side by
side: as it used to (`num_cpus = resources.cpus_per_trial`, so Ray sets `OMP_NUM_THREADS` to it) and
as `tuning.driver_tasks.whole_node` now asks (every CPU of the node). Each arm gets its own cache
folder, so neither reuses the other's product. The backbone is pretrained with a smaller recipe than
the demo's (images per class and epochs above) to keep the run short; the ratio is what carries.
Writes `results/driver_tasks.json` with each task's wall and CPU seconds per arm and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import ray
from machine import cpu_model

from carclf.features import build_head_features
from carclf.pretrained import BackboneRecipe, build_synthetic_backbone, synthetic_backbone_path
from carclf.probe import probe_transfer_cached
from tuning.deliver import deliver_model
from tuning.driver_tasks import whole_node
from tuning.experiment import load_experiment
from tuning.prepare import prepare
from tuning.run_folder import RunFolder
from tuning.trials import DeliveredTrial

RESULTS = Path(__file__).parent / "results" / "driver_tasks.json"


def timed(function, *args):
    """`function(*args)` in the task's process: its wall and CPU seconds (all threads of the process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone-images", type=int, default=20, help="pretraining images per class (the demo's: 60)")
    parser.add_argument("--backbone-epochs", type=int, default=2, help="pretraining epochs (the demo's: 6)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="carclf-driver-tasks-"))
    experiment = load_experiment(overrides=[f"data.cache_dir={root / 'data'}", f"run.storage_path={root / 'runs'}"])
    prepared = prepare(experiment, resume=False)
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    arms = {"one trial's CPUs": {"num_cpus": experiment.resources.cpus_per_trial}, "whole node": whole_node(experiment)}
    figures: dict[str, dict] = {}
    for arm, options in arms.items():
        run = ray.remote(**options)(timed)
        settings = prepared.experiment.trial_settings()
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, cache_dir=str(root / arm.replace(" ", "-"))))
        recipe = BackboneRecipe(image_size=settings.data.image_size, images_per_class=args.backbone_images, epochs=args.backbone_epochs)
        figures.setdefault("backbone", {})[arm] = ray.get(run.remote(build_synthetic_backbone, settings, recipe, None))
        weights = synthetic_backbone_path(settings, recipe)
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, weights=str(weights)))
        figures.setdefault("head features", {})[arm] = ray.get(run.remote(build_head_features, prepared.index, prepared.store, settings, None))
        figures.setdefault("transfer probe", {})[arm] = ray.get(run.remote(probe_transfer_cached, prepared.index, prepared.store, settings))
        folder = RunFolder(root / "runs" / arm.replace(" ", "-"))
        folder.path.mkdir(parents=True)
        config = {"batch_size": 32, "learning_rate": 0.005, "lr_decay": 1e-4, "unfreeze_depth": 0, "head_epochs": 0}
        winner = DeliveredTrial("start", config, best_epoch=1, score=0.0, folder_name="")  # no trial folder: retrained, unchecked
        cpus = int(options["num_cpus"])
        figures.setdefault("retraining (1 epoch) and test", {})[arm] = ray.get(
            run.remote(deliver_model, prepared.index, prepared.store, settings, winner, "train+val", folder, "val_accuracy", cpus))
        print(arm, {task: arms_[arm] for task, arms_ in figures.items()}, flush=True)
    ray.shutdown()
    for task, arms_ in figures.items():
        before, after = arms_["one trial's CPUs"], arms_["whole node"]
        arms_["wall ratio (before / after)"] = before["wall_s"] / after["wall_s"]
        print(f"{task:32s} {before['wall_s']:7.1f} s -> {after['wall_s']:7.1f} s wall ({arms_['wall ratio (before / after)']:.2f}x); "
              f"CPU {before['cpu_s']:.1f} -> {after['cpu_s']:.1f} s")
    RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": arms["whole node"]["num_cpus"],
                                   "backbone_recipe": {"images_per_class": args.backbone_images, "epochs": args.backbone_epochs},
                                   "tasks": figures}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
