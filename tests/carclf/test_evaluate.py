"""Evaluation metrics on known predictions, and the evaluation-server file for unlabeled rows."""

from __future__ import annotations

import numpy as np
import pytest

from carclf.evaluate import Evaluation, classification_metrics, predict_rows, write_server_predictions


def _evaluation(labels):
    # 6 images, 3 classes: predictions 0, 0, 1, 2, 2, 2
    probabilities = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.3, .1, .6], [.1, .4, .5]])
    return Evaluation(probabilities=probabilities, labels=None if labels is None else np.array(labels), class_names=["A", "B", "C"])


def test_metrics_on_known_predictions():
    metrics = _evaluation([0, 1, 1, 2, 2, 0]).metrics()
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    per_class = {c["class_name"]: c for c in metrics["per_class"]}
    assert per_class["A"]["recall"] == pytest.approx(1 / 2) and per_class["A"]["precision"] == pytest.approx(1 / 2)
    assert per_class["B"]["recall"] == pytest.approx(1 / 2) and per_class["B"]["precision"] == pytest.approx(1.0)
    assert per_class["C"]["recall"] == pytest.approx(1.0) and per_class["C"]["precision"] == pytest.approx(2 / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((.5, .5), (1, .5), (2 / 3, 1))]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))
    assert metrics["top5_accuracy"] == 1.0
    assert {"true": "A", "predicted": "C", "count": 1} in metrics["most_confused"]
    assert len(metrics["most_confused"]) == 2


def test_confusion_matrix_rows_are_true_classes():
    matrix = _evaluation([0, 1, 1, 2, 2, 0]).confusion()
    assert matrix.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]


def test_unlabeled_rows_give_server_predictions(tmp_path):
    evaluation = _evaluation(None)
    assert evaluation.metrics() == {"labeled": False, "count": 6}
    path = write_server_predictions(evaluation, tmp_path / "predictions.txt")
    assert path.read_text().split() == ["1", "1", "2", "3", "3", "3"]  # 1-based class ids


def test_classification_metrics_are_exact():
    probabilities = np.array([[.7, .2, .1], [.1, .1, .8], [.3, .4, .3]])
    metrics = classification_metrics(probabilities, np.array([0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([.7, .1, .4])))
    assert metrics["top5_accuracy"] == 1.0  # top-3 of 3 classes


class _Echo:
    """A stand-in model: returns its input rows as 'probabilities', and records the batch shapes it saw."""

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, batch):
        self.shapes.append(batch.shape)
        return batch


def test_predictions_use_one_batch_shape_and_drop_the_padding():
    inputs = np.arange(20, dtype=np.float32).reshape(10, 2)
    model = _Echo()
    out = predict_rows(model, inputs, np.arange(10), 4)
    np.testing.assert_array_equal(out, inputs)
    assert set(model.shapes) == {(4, 2)}


def test_predictions_follow_the_rows_given_and_their_preparation():
    """Rows are read in the order given (store rows, say), each batch prepared with its positions."""
    inputs = np.arange(20, dtype=np.float32).reshape(10, 2)
    rows = np.array([9, 0, 4])
    out = predict_rows(_Echo(), inputs, rows, 2, lambda batch, positions: batch + positions[:, None])
    np.testing.assert_array_equal(out, inputs[rows] + np.arange(3)[:, None])
