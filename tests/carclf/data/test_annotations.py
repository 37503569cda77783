"""The three readers, on devkit files written here, on small files made here, and (the optional
`shared_data` lane, tests/conftest.py) on the real devkit files."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carclf.data.annotations import read_devkit_annotations, read_folder_annotations
from carclf.data.csv_annotations import read_csv_annotations
from carclf.data.synthetic import write_annotations_mat, write_class_names_mat
from carclf.data.table import COLUMNS, DatasetError, class_names, load_index, save_index


@dataclass(frozen=True)
class Devkit:
    """A dataset root holding devkit annotation files (no images), and what they say."""

    root: Path
    train_count: int
    classes: int
    first_class_name: str
    first_box: tuple[int, int, int, int]
    images_per_class: tuple[int, int]  # the fewest and the most training images of a class
    test_count: int  # unlabeled test records


# The real files' facts (../shared/data/stanford_cars/README.md).
REAL = {"train_count": 8144, "classes": 196, "first_class_name": "Audi TTS Coupe 2012", "first_box": (39, 116, 569, 375),
        "images_per_class": (24, 68), "test_count": 8041}
MADE_NAMES = ["AM General Hummer SUV 2000", "Audi TTS Coupe 2012", "Carclf Van White"]
MADE_CLASSES = [2, 1, 3, 2, 3, 3, 1, 3, 2]  # 1-based, as in the files: 2 to 4 images a class


def write_made_devkit(root: Path) -> Devkit:
    """Devkit files in the real ones' layout: 1-based classes, boxes stored as uint8 or uint16 by their value
    (as scipy reads Stanford's files), bare file names, and the unlabeled test release without `class`."""
    (root / "devkit").mkdir(parents=True)
    boxes = [(39, 116, 569, 375)] + [(5 + i, 10, 200 + 60 * i, 90) for i in range(1, len(MADE_CLASSES))]

    def stored(value: int) -> np.generic:
        return np.uint8(value) if value < 256 else np.uint16(value)

    def record(number: int, box: tuple[int, int, int, int]) -> dict:
        return {**{key: stored(v) for key, v in zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"), box)}, "fname": f"{number:05d}.jpg"}

    write_class_names_mat(root / "devkit" / "cars_meta.mat", MADE_NAMES)
    write_annotations_mat(root / "devkit" / "cars_train_annos.mat",
                          [{**record(n, box), "class": np.uint8(c)} for n, (box, c) in enumerate(zip(boxes, MADE_CLASSES), start=1)])
    write_annotations_mat(root / "devkit" / "cars_test_annos.mat", [record(n, boxes[n]) for n in range(1, 5)])
    return Devkit(root, len(MADE_CLASSES), len(MADE_NAMES), "Audi TTS Coupe 2012", boxes[0], (2, 4), 4)


@pytest.fixture(params=[pytest.param("made", id="made-here"), pytest.param("real", id="real", marks=pytest.mark.shared_data)])
def devkit(request, tmp_path) -> Devkit:
    """Devkit files written here, or a copy of the real ones (the shared_data lane)."""
    if request.param == "made":
        return write_made_devkit(tmp_path)
    shutil.copytree(request.getfixturevalue("real_devkit"), tmp_path / "devkit")
    return Devkit(tmp_path, **REAL)


def test_devkit_training_annotations(devkit):
    table = read_devkit_annotations(devkit.root)
    train = table[table["split"] == "train"]
    assert list(table.columns) == COLUMNS
    assert len(train) == devkit.train_count
    assert train["label"].nunique() == devkit.classes and train["label"].min() == 0 and train["label"].max() == devkit.classes - 1
    first = train.iloc[0]
    assert first["path"] == str(devkit.root.resolve() / "cars_train" / "00001.jpg")
    assert first["source"] == "cars_train_annos.mat record 1"
    assert first["class_name"] == devkit.first_class_name
    assert (first["bbox_x1"], first["bbox_y1"], first["bbox_x2"], first["bbox_y2"]) == devkit.first_box
    counts = train["label"].value_counts()
    assert (counts.min(), counts.max()) == devkit.images_per_class
    assert len(class_names(table)) == devkit.classes


def test_unlabeled_test_rows_are_kept_without_label(devkit):
    table = read_devkit_annotations(devkit.root)
    test = table[table["split"] == "test"]
    assert len(test) == devkit.test_count
    assert test["label"].isna().all() and test["class_name"].isna().all()
    assert test["bbox_x2"].notna().all()
    assert test.iloc[0]["path"].endswith("cars_test/00001.jpg")


def test_labeled_test_file_is_preferred(devkit):
    # Stanford's later labeled release has the train file's layout; stand one in from the train file.
    shutil.copy(devkit.root / "devkit" / "cars_train_annos.mat", devkit.root / "devkit" / "cars_test_annos_withlabels.mat")
    test = read_devkit_annotations(devkit.root).query("split == 'test'")
    assert len(test) == devkit.train_count and test["label"].notna().all()


def test_index_round_trips_through_parquet(devkit, tmp_path):
    table = read_devkit_annotations(devkit.root)
    loaded = load_index(save_index(table, tmp_path / "dataset.parquet"))
    pd.testing.assert_frame_equal(loaded.reset_index(drop=True), table.reset_index(drop=True))


def _write_devkit(root, records, names=("A", "B")):
    (root / "devkit").mkdir(parents=True)
    write_annotations_mat(root / "devkit" / "cars_train_annos.mat", records)
    write_class_names_mat(root / "devkit" / "cars_meta.mat", list(names))


def test_mat_file_with_wrong_fields_names_file_and_fields(tmp_path):
    _write_devkit(tmp_path, [{"x1": 1, "class": 1, "fname": "a.jpg"}])
    with pytest.raises(DatasetError, match=r"cars_train_annos\.mat.*lack field\(s\).*bbox_x1"):
        read_devkit_annotations(tmp_path)


def test_class_id_out_of_range_names_record(tmp_path):
    box = {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5}
    _write_devkit(tmp_path, [{**box, "class": 1, "fname": "a.jpg"}, {**box, "class": 2, "fname": "b.jpg"},
                             {**box, "class": 7, "fname": "c.jpg"}])
    with pytest.raises(DatasetError, match=r"record 3 \(c\.jpg\): class 7 is outside 1\.\.2"):
        read_devkit_annotations(tmp_path)


def test_class_without_images_is_an_error(tmp_path):
    box = {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5}
    _write_devkit(tmp_path, [{**box, "class": 1, "fname": "a.jpg"}], names=("A", "B"))
    with pytest.raises(DatasetError, match=r"1 class\(es\) have no training images: 1 'B'"):
        read_devkit_annotations(tmp_path)


def test_not_a_mat_file(tmp_path):
    (tmp_path / "devkit").mkdir()
    (tmp_path / "devkit" / "cars_meta.mat").write_text("not matlab")
    (tmp_path / "devkit" / "cars_train_annos.mat").write_text("not matlab")
    with pytest.raises(DatasetError, match="cars_meta.mat: not a readable MATLAB"):
        read_devkit_annotations(tmp_path)


def test_csv_with_names_boxes_and_split(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "file,class,bbox_x1,bbox_y1,bbox_x2,bbox_y2,split\n"
        "a.jpg,Sedan,1,2,30,40,train\nb.jpg,Van,0,0,10,10,train\nc.jpg,Van,3,3,9,9,test\n"
    )
    table = read_csv_annotations(tmp_path / "labels.csv")
    assert table["class_name"].tolist() == ["Sedan", "Van", "Van"]
    assert table["label"].tolist() == [0, 1, 1]
    assert table["split"].tolist() == ["train", "train", "test"]
    assert table.iloc[0]["bbox_x2"] == 30
    assert table.iloc[2]["path"] == str(tmp_path.resolve() / "c.jpg")


def test_csv_with_integer_ids_and_class_list(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,0\nb.jpg,1\n")
    table = read_csv_annotations(tmp_path / "labels.csv", class_names=["Sedan", "Van"])
    assert table["class_name"].tolist() == ["Sedan", "Van"]
    assert table["bbox_x1"].isna().all()


def test_csv_missing_column_names_file_and_expected_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,colour\na.jpg,red\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: no class column: expected one of"):
        read_csv_annotations(tmp_path / "labels.csv")


def test_csv_unknown_class_name_names_line(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.jpg,Sedan\nb.jpg,Van\nc.jpg,Tractor\n")
    with pytest.raises(DatasetError, match=r"line 4: unknown class name 'Tractor'"):
        read_csv_annotations(tmp_path / "labels.csv", class_names=["Sedan", "Van"])


def test_csv_class_id_out_of_range(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class_id\na.jpg,0\nb.jpg,5\n")
    with pytest.raises(DatasetError, match=r"line 3: class id 5 is outside 0\.\.1"):
        read_csv_annotations(tmp_path / "labels.csv", class_names=["Sedan", "Van"])


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_folder_per_class(tmp_path):
    for name in ("train/Van/1.jpg", "train/Van/2.png", "train/Sedan/3.jpg", "test/Sedan/4.jpeg", "train/Van/notes.txt"):
        _touch(tmp_path / name)
    table = read_folder_annotations(tmp_path)
    assert sorted(table["class_name"].unique()) == ["Sedan", "Van"]
    assert table.query("split == 'train'")["label"].value_counts().to_dict() == {1: 2, 0: 1}
    assert table.query("split == 'test'")["class_name"].tolist() == ["Sedan"]


def test_folder_class_without_images(tmp_path):
    _touch(tmp_path / "train/Van/1.jpg")
    (tmp_path / "train/Sedan").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train/Sedan: class 'Sedan' has no images"):
        read_folder_annotations(tmp_path)


def test_folder_test_class_unknown_to_train(tmp_path):
    _touch(tmp_path / "train/Van/1.jpg")
    _touch(tmp_path / "test/Tractor/2.jpg")
    with pytest.raises(DatasetError, match=r"class 'Tractor' has no folder under"):
        read_folder_annotations(tmp_path)


@pytest.mark.parametrize(
    "lines, message",
    [("a.jpg,Sedan,1,2,x,4\n", r"line 2: bbox_x2 'x' is not a number"),
     ("a.jpg,Sedan,1,2,3.5,4\n", r"line 2: bbox_x2 '3\.5' is not a whole number"),
     ("a.jpg,Sedan,1,,3,4\n", r"line 2: bbox_y1 is empty but other box cells are not"),
     ("a.jpg,,1,2,3,4\n", r"line 2: the 'class' cell is empty"),
     ("b.jpg,Van,1,2,3,4\n,Van,1,2,3,4\n", r"line 3: the 'file' cell is empty"),
     ("a.jpg,Audi A4,1,2,3,4\nb.jpg,audi a4 ,1,2,3,4\n",
      r"1 class name\(s\) differ only in case or surrounding spaces: 'Audi A4' \(line 2\) and 'audi a4 ' \(line 3\)")],
)
def test_csv_values_are_parsed_strictly_naming_the_line(tmp_path, lines, message):
    (tmp_path / "labels.csv").write_text("file,class,bbox_x1,bbox_y1,bbox_x2,bbox_y2\n" + lines)
    with pytest.raises(DatasetError, match=rf"labels\.csv: {message}"):
        read_csv_annotations(tmp_path / "labels.csv")


def test_csv_box_cells_all_empty_mean_no_box(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class,bbox_x1,bbox_y1,bbox_x2,bbox_y2\na.jpg,Sedan,,,,\nb.jpg,Van,1,2,3,4\n")
    table = read_csv_annotations(tmp_path / "labels.csv")
    assert table["bbox_x1"].isna().tolist() == [True, False]
    assert table["source"].tolist() == ["labels.csv line 2", "labels.csv line 3"]


def test_devkit_box_that_is_not_a_number_names_the_record(tmp_path):
    box = {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5}
    _write_devkit(tmp_path, [{**box, "class": 1, "fname": "a.jpg"}, {**box, "bbox_y2": "five", "class": 2, "fname": "b.jpg"}])
    with pytest.raises(DatasetError, match=r"cars_train_annos\.mat: record 2 \(b\.jpg\): bbox_y2 'five' is not a number"):
        read_devkit_annotations(tmp_path)


def test_folder_class_names_differing_in_case_are_refused(tmp_path):
    _touch(tmp_path / "train/Van/1.jpg")
    _touch(tmp_path / "train/van/2.jpg")
    with pytest.raises(DatasetError, match="differ only in case"):
        read_folder_annotations(tmp_path)


def test_folder_ignores_hidden_entries_and_names_what_it_did_not_read(tmp_path, caplog):
    for name in ("train/Van/1.jpg", "train/Sedan/2.jpg", "train/Van/._1.jpg", "train/.DS_Store", "train/.cache/3.jpg",
                 "test/.Trash/4.jpg", "train/Van/5.webp", "train/Van/more/6.jpg", "train/notes.txt"):
        _touch(tmp_path / name)
    with caplog.at_level("WARNING", logger="carclf.data.annotations"):
        table = read_folder_annotations(tmp_path)
    assert sorted(table["class_name"].unique()) == ["Sedan", "Van"]  # no class ".cache"
    assert sorted(Path(p).name for p in table["path"]) == ["1.jpg", "2.jpg"]
    assert "3 entr(ies) not read: train/Van/5.webp, train/Van/more/, train/notes.txt" in caplog.text
    assert "._1.jpg" not in caplog.text and ".DS_Store" not in caplog.text


@pytest.mark.parametrize("label", ["NaN", "None", "nan", "NULL", "N/A"])
def test_csv_labels_pandas_reads_as_missing_are_refused(tmp_path, label):
    (tmp_path / "labels.csv").write_text(f"file,class\na.jpg,Sedan\nb.jpg,{label}\n")
    with pytest.raises(DatasetError, match=rf"labels\.csv: line 3: the 'class' cell holds '{re.escape(label)}', which reads as a missing value"):
        read_csv_annotations(tmp_path / "labels.csv")


def test_csv_with_a_header_and_no_rows_is_named(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class,bbox_x1,bbox_y1,bbox_x2,bbox_y2\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: has a header but no rows"):
        read_csv_annotations(tmp_path / "labels.csv")
