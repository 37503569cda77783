"""The stratified, seeded train/validation split."""

from __future__ import annotations

import pandas as pd

from carclf.data.splits import split_train_validation
from carclf.data.table import make_table, rows_for


def _table():
    rows = [{"path": f"{c}{i}.jpg", "label": c, "split": "train"} for c, n in ((0, 10), (1, 5), (2, 2), (3, 1)) for i in range(n)]
    rows += [{"path": f"t{i}.jpg", "label": 0, "split": "test"} for i in range(4)]
    return make_table(pd.DataFrame(rows))


def test_every_class_with_two_images_is_in_both_splits():
    split = split_train_validation(_table(), 0.2, seed=1)
    for label in (0, 1, 2):
        rows = split[split["label"] == label]
        assert {"train", "val"} <= set(rows["split"]), label
    assert split[split["label"] == 3]["split"].tolist() == ["train"]
    assert (split["split"] == "val").sum() == 2 + 1 + 1


def test_seeded_and_test_rows_untouched():
    table = _table()
    first, again, other = (split_train_validation(table, 0.3, seed=s) for s in (7, 7, 8))
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    assert first.loc[table["split"] == "test", "split"].eq("test").all()
    assert len(rows_for(first, "train", "val")) == 18 and len(rows_for(first, "test")) == 4


def test_rows_of_one_group_share_a_split():
    table = _table()
    groups = [f"image{i // 2}" for i in range(len(table))]  # rows 0-1, 2-3, ... hold the same image
    for seed in range(5):
        split = split_train_validation(table, 0.5, seed=seed, groups=groups)
        shared = pd.DataFrame({"group": groups, "split": split["split"]})[table["split"] == "train"]
        assert (shared.groupby("group")["split"].nunique() == 1).all()
