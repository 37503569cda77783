"""The transfer probe: carclf's head trained on frozen features tells informative features from noise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from carclf.config import parse_run_settings, read_toml
from carclf.data.sources import prepare_dataset
from carclf.model import FEATURE_SIZE, build_backbone
from carclf.probe import PROBE_FILE, cached_probe, head_probe_accuracy, probe_entry, probe_transfer, probe_transfer_cached
from carclf.runtime import configure_process

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.toml"


def features(rng, labels, signal):
    """Noise, plus `signal` in the first four dimensions at each row's label."""
    values = rng.normal(size=(len(labels), FEATURE_SIZE)).astype(np.float32)
    values[np.arange(len(labels)), labels] += signal
    return values


def test_the_probe_tells_informative_features_from_noise(tiny_settings):
    rng = np.random.default_rng(0)
    train_labels, val_labels = rng.integers(0, 4, 120), rng.integers(0, 4, 60)
    informative = head_probe_accuracy(tiny_settings, features(rng, train_labels, 12.0), train_labels,
                                      features(rng, val_labels, 12.0), val_labels, 4)
    noise = head_probe_accuracy(tiny_settings, features(rng, train_labels, 0.0), train_labels,
                                features(rng, val_labels, 0.0), val_labels, 4)
    assert informative >= 0.85 and noise <= 0.5


def test_probe_compares_the_pretrained_backbone_with_random_weights(tiny_dataset, tiny_settings, synthetic_backbone):
    settings = dataclasses.replace(tiny_settings, model=dataclasses.replace(tiny_settings.model, weights=str(synthetic_backbone)))
    probe = probe_transfer(tiny_dataset.index, tiny_dataset.store, settings)
    assert probe.validation_size == 8 and 0 <= probe.pretrained_accuracy <= 1 and 0 <= probe.random_accuracy <= 1
    difference = probe.pretrained_accuracy - probe.random_accuracy
    expected = "better" if difference > 1.96 * probe.standard_error else "not better" if difference <= 0 else "within noise"
    assert probe.verdict == expected and probe.standard_error >= 0 and probe.weights == str(synthetic_backbone)
    again = probe_transfer(tiny_dataset.index, tiny_dataset.store, settings)
    assert (again.pretrained_accuracy, again.random_accuracy) == (probe.pretrained_accuracy, probe.random_accuracy)  # seeded


def test_on_the_demos_cars_the_demo_backbone_is_better_and_random_weights_saved_as_a_file_are_not(synthetic_backbone,
                                                                                                   tmp_path):
    """The demo's data and settings (its experiment file; the cars generated here): the probe finds the synthetic
    backbone better than random weights by more than its noise margin, the story the demo tells. A backbone that does
    not help, random weights saved as a weights file, is found "not better": the verdict is measured, not fixed."""
    settings = parse_run_settings(read_toml(DEMO), str(DEMO))
    settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, root=str(tmp_path / "cars"),
                                                                      cache_dir=str(tmp_path / "cache")))
    dataset = prepare_dataset(settings.data)
    configure_process(None, settings.train.seed)  # the probe's own random backbone, seeded alike
    random_file = tmp_path / "random.weights.h5"
    build_backbone(settings.data.image_size, "none").save_weights(random_file)
    verdicts = {}
    for weights in (synthetic_backbone, random_file):
        probe = probe_transfer(dataset.index, dataset.store,
                               dataclasses.replace(settings, model=dataclasses.replace(settings.model, weights=str(weights))))
        verdicts[weights.name] = (probe.verdict, probe.describe())
    assert verdicts[synthetic_backbone.name][0] == "better", verdicts
    assert verdicts[random_file.name][0] == "not better", verdicts


def test_a_probe_is_cached_by_what_it_depends_on(tiny_dataset, tiny_settings, synthetic_backbone, tmp_path):
    model = dataclasses.replace(tiny_settings.model, weights=str(synthetic_backbone))
    settings = dataclasses.replace(tiny_settings, model=model, data=dataclasses.replace(tiny_settings.data, cache_dir=str(tmp_path)))
    index, store = tiny_dataset.index, tiny_dataset.store
    assert cached_probe(index, store, settings) is None
    probe = probe_transfer_cached(index, store, settings)
    assert probe_entry(index, store, settings).folder.parent == tmp_path / "probes"
    assert cached_probe(index, store, settings) == probe
    assert cached_probe(index, store, settings.with_train(learning_rate=0.05)) is None  # another head, another key
    (probe_entry(index, store, settings).folder / PROBE_FILE).write_text('{"weights": 1}')
    assert cached_probe(index, store, settings) is None  # a damaged file is probed again, not trusted
