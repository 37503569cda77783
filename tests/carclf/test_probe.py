"""The transfer probe: carclf's head trained on frozen features tells informative features from noise."""

from __future__ import annotations

import dataclasses

import numpy as np

from carclf.model import FEATURE_SIZE
from carclf.probe import PROBE_FILE, cached_probe, head_probe_accuracy, probe_entry, probe_transfer, probe_transfer_cached


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
