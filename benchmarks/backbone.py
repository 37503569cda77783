"""The synthetic backbone: what building it costs, and whether the demo's probe finds it better than random weights.

    python benchmarks/backbone.py                                     # this checkout's recipe
    cd OTHER_CHECKOUT && PYTHONPATH=. python PATH/TO/benchmarks/backbone.py   # another checkout's, on the same machine

In a fresh cache folder, the backbone is built in this process with the recipe of the carclf imported:
its wall and CPU seconds (all threads of the process; drawing the source task, building and
tracing the model, training). Then the demo's transfer probe (`carclf.probe`) of that backbone
against random weights, on the demo's data and settings (this script's `experiments/demo.toml`,
the cars generated here). Prints one line and writes `backbone.json` in the current folder.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from machine import cpu_model

import carclf
from carclf.config import DataConfig, RunSettings, TrainConfig, parse_run_settings, read_toml
from carclf.data.sources import prepare_dataset
from carclf.pretrained import build_synthetic_backbone
from carclf.probe import probe_transfer
from carclf.runtime import configure_process

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.toml"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        configure_process(None, seed=0)
        started, cpu_started = time.perf_counter(), time.process_time()
        weights = build_synthetic_backbone(RunSettings(data=DataConfig(image_size=32, cache_dir=f"{folder}/cache"),
                                                       train=TrainConfig(precision="float32")))
        build = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started}
        settings = parse_run_settings(read_toml(DEMO), str(DEMO))
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, root=f"{folder}/cars",
                                                                          cache_dir=f"{folder}/cache"),
                                       model=dataclasses.replace(settings.model, weights=str(weights)))
        dataset = prepare_dataset(settings.data)
        probe = probe_transfer(dataset.index, dataset.store, settings)
    result = {"cpu": cpu_model(), "carclf": str(Path(carclf.__file__).parents[1]), **build, "probe": probe.to_dict()}
    print(f"{result['cpu']}; carclf from {result['carclf']}: backbone built in {build['wall_s']:.1f} s wall, "
          f"{build['cpu_s']:.1f} CPU s; {probe.describe()}")
    Path("backbone.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
