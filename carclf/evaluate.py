"""Predictions over rows of the store, and the metrics computed from them.

Predictions run in fixed-size batches, the last one padded (`carclf.data.batches.padded_batches`)
and its padding's outputs dropped, so the compiled predict step never sees a new shape and every
row counts exactly once: `predict_rows`, the one inference loop, which the test evaluation,
validation during training and the frozen feature extraction (`carclf.features`) share. The same metric functions serve validation during training
(`classification_metrics`) and the final test evaluation (`Evaluation`).

Test metrics: top-1 and top-5 accuracy, per-class accuracy (recall), precision, macro F1, the
confusion matrix and the most-confused class pairs. For an unlabeled test split (Stanford's
unlabeled release) no accuracy can be computed; the predictions are written one 1-based class id
per line in test-file order, the format of the dataset's evaluation server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pandas as pd

from carclf.data.batches import padded_batches
from carclf.files import write_text

NOISE_Z = 1.96  # two accuracies closer than 1.96 combined standard errors are within noise (95 %)


def accuracy_standard_error(accuracy: float, count: int) -> float:
    """The binomial standard error of an accuracy measured on `count` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / count) if count else math.inf

PROBABILITY_FLOOR = 1e-7  # Keras' epsilon: the cross-entropy of a zero probability stays finite


def predict_rows(model: keras.Model, array: np.ndarray, rows: np.ndarray, batch_size: int,
                 prepare: Callable[[np.ndarray, np.ndarray], Any] | None = None) -> np.ndarray:
    """The model's outputs (float32) for `array[rows]`, in order: carclf's one batched inference loop.

    Evaluation, validation and feature extraction all run through it. `prepare(batch, positions)`
    turns a batch of `array` rows (at those positions of `rows`) into the model's input (default:
    as they are).
    """
    outputs = []
    for positions, real in padded_batches(len(rows), batch_size):
        batch = array[rows[positions]]
        inputs = batch if prepare is None else prepare(batch, positions)
        outputs.append(keras.ops.convert_to_numpy(model.predict_on_batch(inputs))[:real])
    return np.concatenate(outputs).astype(np.float32)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cross-entropy loss, accuracy and top-5 accuracy (top-k for fewer than 5 classes), exactly."""
    labels = np.asarray(labels, dtype=np.int64)
    chosen = probabilities[np.arange(len(labels)), labels]
    k = min(5, probabilities.shape[1])
    top_k = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return {
        "loss": float(-np.log(np.clip(chosen, PROBABILITY_FLOOR, 1.0)).mean()),
        "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "top5_accuracy": float((top_k == labels[:, None]).any(axis=1).mean()),
    }


@dataclass
class Evaluation:
    """Predictions for some rows and, when they are labeled, the metrics."""

    probabilities: np.ndarray  # (n, num_classes)
    labels: np.ndarray | None  # (n,), None when unlabeled
    class_names: list[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def confusion(self) -> np.ndarray:
        """Confusion matrix: rows are true classes, columns predicted ones."""
        size = len(self.class_names)
        matrix = np.zeros((size, size), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predicted), 1)
        return matrix

    def metrics(self, most_confused: int = 10) -> dict[str, Any]:
        """Machine-readable metrics (plain Python types, ready for JSON)."""
        if self.labels is None:
            return {"labeled": False, "count": int(len(self.probabilities))}
        matrix = self.confusion()
        correct = np.diag(matrix).astype(float)
        support = matrix.sum(axis=1)
        predicted_count = matrix.sum(axis=0)
        recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
        precision = np.divide(correct, predicted_count, out=np.zeros_like(correct), where=predicted_count > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(correct), where=(precision + recall) > 0)
        per_class = [
            {"label": i, "class_name": name, "support": int(support[i]), "accuracy": float(recall[i]),
             "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            for i, name in enumerate(self.class_names)
        ]
        return {
            "labeled": True,
            "count": int(len(self.labels)),
            **classification_metrics(self.probabilities, self.labels),
            "macro_precision": float(precision[support > 0].mean()),
            "macro_recall": float(recall[support > 0].mean()),
            "macro_f1": float(f1[support > 0].mean()),
            "per_class": per_class,
            "most_confused": self.most_confused_pairs(matrix, most_confused),
        }

    def most_confused_pairs(self, matrix: np.ndarray, count: int) -> list[dict[str, Any]]:
        """The off-diagonal cells with the most images: (true class, predicted class, count)."""
        off_diagonal = matrix.copy()
        np.fill_diagonal(off_diagonal, 0)
        order = np.argsort(-off_diagonal, axis=None)[:count]
        pairs = []
        for flat in order:
            true, predicted = np.unravel_index(flat, matrix.shape)
            if off_diagonal[true, predicted] == 0:
                break
            pairs.append({"true": self.class_names[true], "predicted": self.class_names[predicted],
                          "count": int(off_diagonal[true, predicted])})
        return pairs


def evaluate(model: keras.Model, rows: pd.DataFrame, pixels: np.ndarray, class_names: list[str], batch_size: int = 32) -> Evaluation:
    """Predict every row (table order, no augmentation) from the store's `pixels`; keep the labels
    where every row has one."""
    probabilities = predict_rows(model, pixels, rows["store_row"].to_numpy(dtype=np.int64), batch_size)
    labeled = rows["label"].notna().all()
    labels = rows["label"].to_numpy(dtype=np.int64) if labeled else None
    return Evaluation(probabilities=probabilities, labels=labels, class_names=class_names)


def write_server_predictions(evaluation: Evaluation, path: str | Path) -> Path:
    """One 1-based class id per line, in row order: the Stanford Cars evaluation server's format."""
    return write_text(path, "".join(f"{label + 1}\n" for label in evaluation.predicted))
