"""Evaluation of a trained classifier on labeled rows, or predictions for unlabeled ones.

Metrics: top-1 and top-5 accuracy, per-class accuracy (recall), precision, macro F1, the
confusion matrix and the most-confused class pairs. For an unlabeled test split (Stanford's
unlabeled release) no accuracy can be computed; the predictions are written one 1-based class id
per line in test-file order, the format of the dataset's evaluation server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from carclf.config import DataConfig
from carclf.data.pipeline import make_dataset, naming_bad_images
from carclf.files import write_text


@dataclass
class Evaluation:
    """Predictions for `rows` and, when they are labeled, the metrics."""

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
        k = min(5, len(self.class_names))
        top_k = np.argsort(-self.probabilities, axis=1)[:, :k]
        per_class = [
            {"label": i, "class_name": name, "support": int(support[i]), "accuracy": float(recall[i]),
             "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            for i, name in enumerate(self.class_names)
        ]
        return {
            "labeled": True,
            "count": int(len(self.labels)),
            "accuracy": float((self.predicted == self.labels).mean()),
            "top5_accuracy": float((top_k == self.labels[:, None]).any(axis=1).mean()),
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


def evaluate(model: keras.Model, rows: pd.DataFrame, data: DataConfig, class_names: list[str], batch_size: int = 32,
             image_store: str | Path | None = None) -> Evaluation:
    """Predict every row (in table order, no augmentation) and keep the labels where all rows have one."""
    dataset = make_dataset(rows, data, batch_size, training=False, image_store=image_store).map(lambda images, labels: images)
    with naming_bad_images(rows):
        probabilities = model.predict(dataset, verbose=0)
    labeled = rows["label"].notna().all()
    labels = rows["label"].to_numpy(dtype=np.int64) if labeled else None
    return Evaluation(probabilities=probabilities, labels=labels, class_names=class_names)


def write_server_predictions(evaluation: Evaluation, path: str | Path) -> Path:
    """One 1-based class id per line, in row order: the Stanford Cars evaluation server's format."""
    return write_text(path, "".join(f"{label + 1}\n" for label in evaluation.predicted))
