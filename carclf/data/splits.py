"""Seeded, stratified train/validation split; the test split never takes part in tuning."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def split_train_validation(index: pd.DataFrame, validation_fraction: float, seed: int,
                           groups: Sequence[str] | None = None) -> pd.DataFrame:
    """Mark a stratified, seeded `validation_fraction` of the training rows as split "val".

    Rows of one group (the same image bytes: `groups` are content digests) always land in the same
    split, so validation never scores an image the model trained on. Every class with at least
    two training groups keeps at least one in each split. Test rows are returned untouched.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be strictly between 0 and 1, got {validation_fraction}")
    table = index.copy()
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero((table["split"] == "train").to_numpy())
    keys = np.asarray(groups, dtype=object)[positions] if groups is not None else positions
    labels = table["label"].to_numpy()[positions]
    first_label = {}  # a group belongs to the class of its first row
    for key, label in zip(keys, labels):
        first_label.setdefault(key, label)
    members_of: dict = {}
    for key, label in first_label.items():
        members_of.setdefault(label, []).append(key)
    validation_keys = set()
    for label in sorted(members_of):
        members = members_of[label]
        if len(members) < 2:
            continue
        order = rng.permutation(len(members))
        count = min(max(1, round(validation_fraction * len(members))), len(members) - 1)
        validation_keys.update(members[i] for i in order[:count])
    split = table["split"].to_numpy(dtype=object)
    split[positions[[key in validation_keys for key in keys]]] = "val"
    table["split"] = pd.array(split, dtype="string")
    return table
