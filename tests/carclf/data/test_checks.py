"""Checks of the table against the files: each problem names row and file; skipping is counted."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from carclf.data.checks import check_index
from carclf.data.table import DatasetError, make_table


def _image(path, size=(40, 30)):
    Image.new("RGB", size, (200, 0, 0)).save(path)
    return str(path)


def _table(rows):
    frame = make_table(pd.DataFrame(rows))
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def test_clean_table_passes(tmp_path):
    table = _table([{"path": _image(tmp_path / "a.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 40, "bbox_y2": 30}])
    checked, report = check_index(table, tmp_path)
    assert len(checked) == 1 and report.skipped == 0


def test_missing_files_are_counted_and_the_first_named(tmp_path):
    table = _table([{"path": str(tmp_path / f"missing{i}.jpg"), "label": 0} for i in range(5)])
    with pytest.raises(DatasetError) as raised:
        check_index(table, tmp_path)
    message = str(raised.value)
    assert "missing image file: 5 row(s)" in message
    assert "row 1 " in message and "missing0.jpg" in message and "and 2 more" in message
    assert "skip_bad_rows" in message


@pytest.mark.parametrize(
    "box, problem",
    [((10, 10, 50, 20), "bounding box outside the image"), ((10, 10, 10, 20), "empty bounding box"),
     ((-1, 0, 5, 5), "bounding box outside the image")],
)
def test_bad_boxes_name_the_row(tmp_path, box, problem):
    good = {"path": _image(tmp_path / "good.jpg"), "label": 0}
    bad = {"path": _image(tmp_path / "bad.jpg"), "label": 0, **dict(zip(["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"], box))}
    with pytest.raises(DatasetError, match=rf"{problem}: 1 row\(s\) \(row 2 .*bad\.jpg"):
        check_index(_table([good, bad]), tmp_path)


def test_path_climbing_out_of_the_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    outside = _image(tmp_path / "secret.jpg")
    table = _table([{"path": str(root / ".." / "secret.jpg"), "label": 0}])
    assert outside
    with pytest.raises(DatasetError, match="points outside the dataset root"):
        check_index(table, root)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty image file: 1 row"):
        check_index(_table([{"path": str(tmp_path / "empty.jpg"), "label": 0}]), tmp_path)


def test_skip_bad_rows_drops_and_counts(tmp_path):
    rows = [{"path": _image(tmp_path / "ok.jpg"), "label": 0}, {"path": str(tmp_path / "gone.jpg"), "label": 0},
            {"path": _image(tmp_path / "box.jpg"), "label": 0, "bbox_x1": 0, "bbox_y1": 0, "bbox_x2": 99, "bbox_y2": 5}]
    checked, report = check_index(_table(rows), tmp_path, skip_bad_rows=True)
    assert checked["path"].tolist() == [rows[0]["path"]]
    assert report.skipped == 2
    assert set(report.problems) == {"missing image file", "bounding box outside the image"}


def test_missing_data_folder_is_named(tmp_path):
    from carclf.config import DataConfig
    from carclf.data.sources import index_dataset

    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nowhere'}: data folder not found"):
        index_dataset(DataConfig(format="devkit", root=str(tmp_path / "nowhere")))
