"""Checks of the table against the files, and the whole preparation: each problem names its source
line and file; skipping is counted; a test image never reaches training."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from carclf.config import DataConfig
from carclf.data.checks import check_files
from carclf.data.sources import prepare_dataset
from carclf.data.table import DatasetError, make_table


def _image(path, size=(40, 30), colour=(200, 0, 0)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _table(rows):
    return make_table(pd.DataFrame([{"source": f"labels.csv line {i}", **row} for i, row in enumerate(rows, start=2)]))


def test_clean_table_passes(tmp_path):
    table = _table([{"path": _image(tmp_path / "a.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 40, "bbox_y2": 30}])
    checked, report = check_files(table, tmp_path)
    assert len(checked) == 1 and report.skipped == 0


def test_missing_files_are_counted_and_the_first_named(tmp_path):
    table = _table([{"path": str(tmp_path / f"missing{i}.jpg"), "label": 0} for i in range(5)])
    with pytest.raises(DatasetError) as raised:
        check_files(table, tmp_path)
    message = str(raised.value)
    assert "missing image file: 5 row(s)" in message
    assert "labels.csv line 2 " in message and "missing0.jpg" in message and "and 2 more" in message
    assert "skip_bad_rows" in message


@pytest.mark.parametrize(
    "box, problem",
    [((10, 10, 50, 20), "bounding box outside the image"), ((10, 10, 10, 20), "empty bounding box"),
     ((-1, 0, 5, 5), "bounding box outside the image")],
)
def test_bad_boxes_name_the_line(tmp_path, box, problem):
    good = {"path": _image(tmp_path / "good.jpg"), "label": 0}
    bad = {"path": _image(tmp_path / "bad.jpg"), "label": 0, **dict(zip(["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"], box))}
    with pytest.raises(DatasetError, match=rf"{problem}: 1 row\(s\) \(labels\.csv line 3 .*bad\.jpg"):
        check_files(_table([good, bad]), tmp_path)


def test_box_is_checked_against_the_upright_photo(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 wide and 40 high, shown 40 wide and 30 high
    Image.new("RGB", (30, 40)).save(tmp_path / "phone.jpg", exif=exif)
    fits = {"path": str(tmp_path / "phone.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 40, "bbox_y2": 30}
    assert len(check_files(_table([fits]), tmp_path)[0]) == 1


def test_path_climbing_out_of_the_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _image(tmp_path / "secret.jpg")
    with pytest.raises(DatasetError, match="points outside the dataset root"):
        check_files(_table([{"path": str(root / ".." / "secret.jpg"), "label": 0}]), root)


def test_zero_byte_and_unreadable_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    rows = [{"path": str(tmp_path / "empty.jpg"), "label": 0}, {"path": str(tmp_path / "text.jpg"), "label": 0}]
    with pytest.raises(DatasetError, match=r"empty image file: 1 row.*\n.*unreadable image: 1 row\(s\) \(labels\.csv line 3"):
        check_files(_table(rows), tmp_path)


def test_skip_bad_rows_drops_and_counts(tmp_path):
    rows = [{"path": _image(tmp_path / "ok.jpg"), "label": 0}, {"path": str(tmp_path / "gone.jpg"), "label": 0},
            {"path": _image(tmp_path / "box.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 99, "bbox_y2": 5}]
    checked, report = check_files(_table(rows), tmp_path, skip_bad_rows=True)
    assert checked["path"].tolist() == [rows[0]["path"]]
    assert report.skipped == 2
    assert set(report.problems) == {"missing image file", "bounding box outside the image"}


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nowhere'}: data folder not found"):
        prepare_dataset(DataConfig(format="devkit", root=str(tmp_path / "nowhere")))


def _csv_dataset(tmp_path, lines):
    root = tmp_path / "data"
    root.mkdir()
    colours = {"red": (220, 0, 0), "blue": (0, 0, 220)}
    for i in range(6):
        for name, colour in colours.items():
            _image(root / f"{name}{i}.jpg", colour=(colour[0], i * 30, colour[2]))
    (root / "labels.csv").write_text("file,class,split\n" + "".join(f"{line}\n" for line in lines))
    return DataConfig(format="csv", root=str(root), csv_file="labels.csv", image_size=16, cache_dir=str(tmp_path / "cache"))


def _rows(extra=()):
    return [f"{c}{i}.jpg,{c},train" for c in ("red", "blue") for i in range(4)] + [f"{c}5.jpg,{c},test" for c in ("red", "blue")] + list(extra)


def test_a_test_image_listed_for_training_too_is_refused(tmp_path):
    data = _csv_dataset(tmp_path, _rows(["red5.jpg,red,train"]))
    with pytest.raises(DatasetError, match=r"image also in the test split: 1 row\(s\) \(labels\.csv line 12 .*red5\.jpg: "
                                           r"the same image as test row labels\.csv line 10"):
        prepare_dataset(data)


def test_the_same_bytes_under_another_name_are_found_and_can_be_skipped(tmp_path):
    data = _csv_dataset(tmp_path, _rows(["copy.jpg,blue,train"]))
    shutil.copy(f"{data.root}/blue5.jpg", f"{data.root}/copy.jpg")
    with pytest.raises(DatasetError, match="image also in the test split"):
        prepare_dataset(data)
    skipped = prepare_dataset(dataclasses.replace(data, skip_bad_rows=True))
    assert skipped.skipped == 1 and not skipped.index["path"].str.endswith("copy.jpg").any()


def test_duplicate_images_stay_in_one_split(tmp_path):
    data = _csv_dataset(tmp_path, _rows([f"copy{i}.jpg,red,train" for i in range(4)]))  # each red image twice, under two names
    for i in range(4):
        shutil.copy(f"{data.root}/red{i}.jpg", f"{data.root}/copy{i}.jpg")
    index = prepare_dataset(dataclasses.replace(data, validation_fraction=0.5)).index
    split_of = dict(zip(index["path"].map(lambda path: Path(path).name), index["split"]))
    assert all(split_of[f"red{i}.jpg"] == split_of[f"copy{i}.jpg"] for i in range(4)) and (index["split"] == "val").any()


def test_undecodable_image_names_file_and_line(tmp_path):
    data = _csv_dataset(tmp_path, _rows())
    with open(f"{data.root}/blue2.jpg", "r+b") as handle:
        handle.truncate(300)
    with pytest.raises(DatasetError, match=r"unreadable image: 1 row\(s\) \(labels\.csv line 8 .*blue2\.jpg"):
        prepare_dataset(data)


def test_empty_validation_split_is_an_error(tmp_path):
    data = _csv_dataset(tmp_path, ["red0.jpg,red,train", "blue0.jpg,blue,train"])
    with pytest.raises(DatasetError, match="the validation split is empty"):
        prepare_dataset(data)


def test_a_repeated_row_is_refused_naming_both_lines_or_skipped_and_counted(tmp_path):
    row = {"path": _image(tmp_path / "a.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 40, "bbox_y2": 30}
    other = {**row, "path": _image(tmp_path / "b.jpg")}
    table = _table([row, other, {**row, "path": str(tmp_path / "." / "a.jpg")}])
    with pytest.raises(DatasetError, match=r"duplicated row: 1 row\(s\) \(labels\.csv line 4 \S*a\.jpg: the same file and box as labels\.csv line 2"):
        check_files(table, tmp_path)
    checked, report = check_files(table, tmp_path, skip_bad_rows=True)
    assert checked["source"].tolist() == ["labels.csv line 2", "labels.csv line 3"] and report.skipped == 1
    cropped = _table([row, {**row, "bbox_x2": 20}])  # the same file with another box: another crop
    assert len(check_files(cropped, tmp_path)[0]) == 2
