"""Which run a command means: the saved experiment, resolved, against what the user asked for."""

from __future__ import annotations

import dataclasses

from tuning.experiment import DEMO_EXPERIMENT, experiment_from_document, load_experiment
from tuning.resume import as_requested, differences, resolved_values


def test_a_resolved_experiment_remembers_what_it_was_resolved_from(tmp_path):
    requested = load_experiment(DEMO_EXPERIMENT, [f"run.storage_path='{tmp_path}'"])
    weights = tmp_path / "backbone.weights.h5"
    settings = requested.settings.with_train(epoch_images=96)
    resolved = requested.with_settings(dataclasses.replace(settings, model=dataclasses.replace(settings.model, weights=str(weights))))

    resolved_from = resolved_values(resolved, requested)
    assert resolved_from == {"model.weights": requested.settings.model.weights, "train.epoch_images": 0}
    document = resolved.to_dict()
    given = experiment_from_document(as_requested(document, resolved_from), "experiment.json")
    assert given.to_dict() == requested.to_dict() and document["model"]["weights"] == str(weights)  # the document is not changed
    assert differences(given, requested) == set()
    assert differences(resolved, requested) == {"model.weights", "train.epoch_images"}
