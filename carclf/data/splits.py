"""Seeded, stratified train/validation split; the test split never takes part in tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_train_validation(index: pd.DataFrame, validation_fraction: float, seed: int) -> pd.DataFrame:
    """Mark a stratified, seeded `validation_fraction` of the training rows as split "val".

    Every class with at least two training images keeps at least one in each split. Test rows
    are returned untouched.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be strictly between 0 and 1, got {validation_fraction}")
    table = index.copy()
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero((table["split"] == "train").to_numpy())
    labels = table["label"].to_numpy()[positions]
    validation = []
    for label in np.unique(labels):
        members = rng.permutation(positions[labels == label])
        if len(members) < 2:
            continue
        count = min(max(1, round(validation_fraction * len(members))), len(members) - 1)
        validation.extend(members[:count])
    split = table["split"].to_numpy(dtype=object)
    split[validation] = "val"
    table["split"] = pd.array(split, dtype="string")
    return table


def rows_for(index: pd.DataFrame, *splits: str) -> pd.DataFrame:
    """The rows of the given splits, in table order (e.g. `rows_for(index, "train", "val")` to retrain)."""
    return index[index["split"].isin(splits)]
