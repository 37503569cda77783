"""The tf.data pipeline: decoding every colour mode, cropping, order, augmentation, bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carclf.config import DataConfig
from carclf.data.pipeline import ImageDecodeError, make_dataset, naming_bad_images
from carclf.data.table import make_table

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def _rows(entries):
    return make_table(pd.DataFrame(entries))


def _undo_preprocess(batch):
    """ResNet50's preprocessing is BGR minus the ImageNet mean: invert it to RGB pixels."""
    return (np.asarray(batch) + CAFFE_MEAN_BGR)[..., ::-1]


def test_grayscale_cmyk_and_png_named_jpg_load_as_rgb(tmp_path):
    pixels = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.jpg")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(pixels).save(tmp_path / "png.jpg", format="PNG")
    rows = _rows([{"path": str(tmp_path / n), "label": i} for i, n in enumerate(["gray.jpg", "cmyk.jpg", "png.jpg"])])
    images, labels = next(iter(make_dataset(rows, DataConfig(image_size=24), batch_size=3, training=False)))
    assert images.shape == (3, 24, 24, 3)
    assert labels.numpy().tolist() == [0, 1, 2]


def test_crop_to_the_box_with_margin(tmp_path):
    canvas = np.zeros((100, 200, 3), np.uint8)
    canvas[20:60, 120:180] = (255, 0, 0)  # a red car at x 120..180, y 20..60
    Image.fromarray(canvas).save(tmp_path / "car.png")
    rows = _rows([{"path": str(tmp_path / "car.png"), "label": 0, "bbox_x1": 120, "bbox_y1": 20, "bbox_x2": 180, "bbox_y2": 60}])
    crop = DataConfig(image_size=16, bbox_margin=0.0)
    image = _undo_preprocess(next(iter(make_dataset(rows, crop, 1, training=False)))[0][0])
    assert image[..., 0].min() > 240 and image[..., 1].max() < 15  # all red
    whole = _undo_preprocess(next(iter(make_dataset(rows, DataConfig(image_size=16, crop_to_bbox=False), 1, training=False)))[0][0])
    assert whole[..., 0].mean() < 100  # mostly black
    margin = _undo_preprocess(next(iter(make_dataset(rows, DataConfig(image_size=16, bbox_margin=0.5), 1, training=False)))[0][0])
    assert margin[0, 0, 0] < 50 and margin[8, 8, 0] > 240  # black border, red centre


def test_evaluation_is_ordered_and_deterministic(tiny_index):
    rows = tiny_index[tiny_index["split"] == "test"]
    data = DataConfig(image_size=32)
    first = [(x.numpy(), y.numpy()) for x, y in make_dataset(rows, data, 5, training=False)]
    second = [(x.numpy(), y.numpy()) for x, y in make_dataset(rows, data, 5, training=False)]
    assert np.concatenate([y for _, y in first]).tolist() == rows["label"].tolist()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))


def test_training_batches_are_shuffled_and_augmented_each_epoch(tiny_index):
    rows = tiny_index[tiny_index["split"] == "train"]
    dataset = make_dataset(rows, DataConfig(image_size=32), len(rows), training=True, seed=1)
    (x1, y1), (x2, y2) = [next(iter(dataset)) for _ in range(2)]
    assert sorted(y1.numpy().tolist()) == sorted(rows["label"].tolist())
    assert y1.numpy().tolist() != y2.numpy().tolist()
    plain = next(iter(make_dataset(rows, DataConfig(image_size=32, horizontal_flip=False, rotation_degrees=0), len(rows), training=True, seed=1)))
    assert not np.allclose(np.sort(np.asarray(x1).ravel()), np.sort(np.asarray(plain[0]).ravel()))


def test_corrupt_image_error_names_the_file(tmp_path, tiny_index):
    good = tiny_index.iloc[0]["path"]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(good, "rb").read()[:200])
    (tmp_path / "text.jpg").write_text("this is not an image")
    rows = _rows([{"path": good, "label": 0}, {"path": str(truncated), "label": 0}, {"path": str(tmp_path / "text.jpg"), "label": 0}])
    with pytest.raises(ImageDecodeError) as raised:
        with naming_bad_images(rows):
            list(make_dataset(rows, DataConfig(image_size=32), 3, training=False))
    message = str(raised.value)
    assert "2 image(s) cannot be decoded" in message
    assert "truncated.jpg" in message and "text.jpg" in message and good not in message


def test_very_large_image_loads_and_resizes(tmp_path):
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=70)
    rows = _rows([{"path": str(tmp_path / "huge.jpg"), "label": 0, "bbox_x1": 100, "bbox_y1": 100, "bbox_x2": 5900, "bbox_y2": 3900}])
    images, _ = next(iter(make_dataset(rows, DataConfig(image_size=32), 1, training=False)))
    assert images.shape == (1, 32, 32, 3)
    assert abs(_undo_preprocess(images[0])[..., 1].mean() - 200) < 5
