"""The learning-curve recorder (benchmarks/curves.py) scores every epoch on test as the trial sees validation.

While a head trains alone on cached frozen features there is no network to run the test images
through, so the recorder scores the head on the test images' clean features. This checks that this
score is the one the whole classifier (the pretrained backbone with that head) gets on the test
images.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import curves  # noqa: E402

from carclf.config import ModelConfig  # noqa: E402
from carclf.data.table import rows_for  # noqa: E402
from carclf.evaluate import classification_metrics, predict_rows  # noqa: E402
from carclf.model import build_classifier, transfer_weights  # noqa: E402
from carclf.train import TrainingData, TrainingRun  # noqa: E402


def test_a_head_trained_on_cached_features_is_scored_on_test_as_the_whole_classifier_scores(tiny_settings, tiny_dataset,
                                                                                           synthetic_backbone):
    settings = dataclasses.replace(tiny_settings, model=ModelConfig(weights=str(synthetic_backbone), dropout=0.0),
                                   train=dataclasses.replace(tiny_settings.train, unfreeze_depth=0, feature_views=2, epochs=1,
                                                             learning_rate=0.05))
    run = TrainingRun(TrainingData(tiny_dataset.index, tiny_dataset.store, curves.head_features(tiny_dataset, settings)), settings)
    run.train_epoch()
    assert run.classifier is None  # the head alone, trained on cached features
    test = rows_for(tiny_dataset.index, "test")
    rows, labels = test["store_row"].to_numpy(dtype=np.int64), test["label"].to_numpy()

    features = curves.features_of_test(tiny_dataset, settings)
    recorded = curves.accuracy_on_test(run, rows, labels, features)

    classifier = build_classifier(4, settings.data, settings.model, 0, settings.train.seed, "float32")
    transfer_weights(run.final_model, classifier)  # the backbone with the head the run trained
    through_network = predict_rows(classifier, run.pixels, rows, 32)
    np.testing.assert_allclose(predict_rows(run.final_model, features, np.arange(len(rows)), 32), through_network, atol=1e-4)
    assert recorded == classification_metrics(through_network, labels)["accuracy"]
