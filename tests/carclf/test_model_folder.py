"""A model folder's files that are not what carclf writes are refused, naming the file; the round trip
through `python -m carclf.train` and `carclf.predict` is tested in test_train.py."""

from __future__ import annotations

import json

import pytest

from carclf.model_folder import ModelFolder, ModelFolderError


def test_the_folder_of_a_model_file_keeps_its_name(tmp_path):
    folder = ModelFolder.of_model(tmp_path / "best" / "cars.keras")
    assert (folder.model_file, folder.labels_file, folder.config_file) == (
        tmp_path / "best" / "cars.keras", tmp_path / "best" / "labels.json", tmp_path / "best" / "config.json")
    assert ModelFolder(str(tmp_path)).model_file == tmp_path / "model.keras"


def test_a_model_file_that_keras_would_not_save_as_keras_is_refused(tmp_path):
    with pytest.raises(ModelFolderError, match=r"model\.h5: model files must end in \.keras"):
        ModelFolder.of_model(tmp_path / "model.h5")


@pytest.mark.parametrize("text, message", [
    ('{"names": ["a"]}', r"labels\.json: not a labels file \(expected \{\"class_names\": \[\.\.\.\]\}\): 'class_names'"),
    ('{"class_names": "a b"}', r"labels\.json: not a labels file .*: class_names is a str"),
    ("not json", r"labels\.json: not a labels file"),
])
def test_labels_that_are_not_a_list_of_names_are_refused(tmp_path, text, message):
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(ModelFolderError, match=message):
        ModelFolder(tmp_path).read_class_names()


def test_missing_labels_say_what_carclf_saves(tmp_path):
    with pytest.raises(ModelFolderError, match=r"labels\.json: labels\.json not found beside the model; carclf saves the class names"):
        ModelFolder(tmp_path).read_class_names()


@pytest.mark.parametrize("config, message", [
    ({"hyperparameters": None}, r"config\.json: not a carclf config file \(expected \{\"settings\": \{\"data\": \{\.\.\.\}\}\}\): 'settings'"),
    ({"settings": {"data": {"bbox_margn": 0.3}}}, r"config\.json settings\.data: unknown key\(s\) \['bbox_margn'\]"),
    ({"settings": {"data": {"bbox_margin": 2.0}}}, r"config\.json settings\.data: key bbox_margin must be in 0\.\.1, got 2\.0"),
])
def test_settings_that_are_not_carclf_s_are_refused_naming_the_key(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=message):
        ModelFolder(tmp_path).read_data_config()


def test_a_folder_without_settings_reads_none_and_one_with_them_reads_its_crop(tmp_path):
    assert ModelFolder(tmp_path).read_data_config() is None
    (tmp_path / "config.json").write_text(json.dumps({"settings": {"data": {"bbox_margin": 0.3, "crop_to_bbox": False}}}))
    data = ModelFolder(tmp_path).read_data_config()
    assert (data.bbox_margin, data.crop_to_bbox) == (0.3, False)
