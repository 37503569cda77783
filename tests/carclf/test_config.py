"""Config parsing: unknown keys, wrong types and impossible values name the file and key."""

from __future__ import annotations

import pytest

from carclf.config import ConfigError, RunSettings, TrainConfig, apply_overrides, parse_section


def test_values_are_typed_and_ints_become_floats():
    train = parse_section(TrainConfig, {"learning_rate": 1, "epochs": 3}, "f.toml [train]")
    assert train.learning_rate == 1.0 and isinstance(train.learning_rate, float) and train.epochs == 3


@pytest.mark.parametrize(
    "table, message",
    [({"epochz": 3}, r"f\.toml \[train\]: unknown key\(s\) \['epochz'\]"),
     ({"epochs": "3"}, r"f\.toml \[train\]: key 'epochs' must be int, got str"),
     ({"epochs": 2.5}, r"key 'epochs' must be int, got float"),
     ({"epochs": True}, r"key 'epochs' must be int, got bool"),
     ({"learning_rate": 0}, r"f\.toml \[train\]: key learning_rate must be > 0, got 0"),
     ({"unfreeze_depth": 17}, r"key unfreeze_depth must be in 0\.\.16")],
)
def test_bad_tables_name_file_and_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_section(TrainConfig, table, "f.toml [train]")


def test_overrides_parse_toml_values_and_bare_strings():
    document = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=4", "data.root=/x/y", "search.space.a={ choice = [1, 2] }"], "f")
    assert document["train"]["epochs"] == 4
    assert document["data"]["root"] == "/x/y"
    assert document["search"]["space"]["a"] == {"choice": [1, 2]}


def test_malformed_override_is_named():
    with pytest.raises(ConfigError, match=r"override 'epochs' must look like section\.key=value"):
        apply_overrides({}, ["epochs"], "f")


def test_hyperparameters_replace_model_and_train_fields():
    settings = RunSettings().with_hyperparameters({"learning_rate": 0.1, "dropout": 0.4, "unfreeze_depth": 3})
    assert (settings.train.learning_rate, settings.model.dropout, settings.train.unfreeze_depth) == (0.1, 0.4, 3)
    with pytest.raises(ConfigError, match=r"not tunable: \['colour'\]"):
        RunSettings().with_hyperparameters({"colour": 1})


def test_sampled_values_take_their_keys_types():
    settings = RunSettings().with_hyperparameters({"batch_size": 16.0, "learning_rate": 1})
    assert settings.train.batch_size == 16 and isinstance(settings.train.batch_size, int)
    assert isinstance(settings.train.learning_rate, float)
    with pytest.raises(ConfigError, match="batch_size takes whole numbers, got 16.5"):
        RunSettings().with_hyperparameters({"batch_size": 16.5})
