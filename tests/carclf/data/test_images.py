"""What the network sees of a photo: colour modes, EXIF orientation, box crops, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from carclf.data.images import ImageError, crop_window, load_crop, oriented_size


def test_grayscale_cmyk_and_png_named_jpg_load_as_rgb(tmp_path):
    pixels = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.jpg")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(pixels).save(tmp_path / "png.jpg", format="PNG")
    for name in ("gray.jpg", "cmyk.jpg", "png.jpg"):
        crop = load_crop(tmp_path / name, None, 24)
        assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8


def test_crop_to_the_box_with_margin(tmp_path):
    canvas = np.zeros((100, 200, 3), np.uint8)
    canvas[20:60, 120:180] = (255, 0, 0)  # a red car at x 120..180, y 20..60
    Image.fromarray(canvas).save(tmp_path / "car.png")
    box = (120, 20, 180, 60)
    red = load_crop(tmp_path / "car.png", box, 16, margin=0.0)
    assert red[..., 0].min() > 240 and red[..., 1].max() < 15  # all red
    assert load_crop(tmp_path / "car.png", None, 16)[..., 0].mean() < 100  # the whole picture: mostly black
    framed = load_crop(tmp_path / "car.png", box, 16, margin=0.5)
    assert framed[0, 0, 0] < 50 and framed[8, 8, 0] > 240  # black border, red centre
    assert crop_window(box, 200, 100, 0.5) == (90.0, 0.0, 200.0, 80.0)  # grown by half the box, kept inside


def _sideways_photo(path, orientation):
    """An upright picture (red top half, blue bottom) stored turned by 90 degrees, with the EXIF tag that undoes it."""
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:20] = (255, 0, 0)
    upright[20:] = (0, 0, 255)
    stored = np.rot90(upright, k=1 if orientation == 6 else -1)  # tag 6: the viewer turns the stored image 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif, quality=95)
    return upright


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_turns_the_photo_upright(tmp_path, orientation):
    upright = _sideways_photo(tmp_path / "phone.jpg", orientation)
    assert oriented_size(tmp_path / "phone.jpg") == (60, 40)
    crop = load_crop(tmp_path / "phone.jpg", None, 20).astype(int)
    assert crop[2, 10, 0] > 200 and crop[2, 10, 2] < 60  # red on top, as the viewer shows it
    assert crop[17, 10, 2] > 200 and crop[17, 10, 0] < 60
    top_box = load_crop(tmp_path / "phone.jpg", (0, 0, 60, 20), 8, margin=0.0).astype(int)  # a box in upright pixels
    assert top_box[..., 0].min() > 200
    assert upright.shape == (40, 60, 3)


def test_box_that_does_not_fit_names_box_and_size(tmp_path):
    Image.new("RGB", (50, 40)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small\.png: box \(10, 10, 80, 30\) does not fit in the 50x40 image"):
        load_crop(tmp_path / "small.png", (10, 10, 80, 30), 16)
    with pytest.raises(ImageError, match=r"box \(30, 10, 20, 30\) is empty"):
        load_crop(tmp_path / "small.png", (30, 10, 20, 30), 16)


def test_unreadable_files_are_named(tmp_path, tiny_cars):
    good = next((tiny_cars / "cars_train").glob("*.jpg"))
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.jpg").write_text("this is not an image")
    for name in ("truncated.jpg", "text.jpg"):
        with pytest.raises(ImageError, match=rf"{name}: not a readable image"):
            load_crop(tmp_path / name, None, 16)


def test_large_photo_is_read_at_a_reduced_scale_with_the_same_colours(tmp_path):
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=70)
    crop = load_crop(tmp_path / "huge.jpg", (100, 100, 5900, 3900), 32)
    assert crop.shape == (32, 32, 3) and abs(crop[..., 1].astype(float).mean() - 200) < 5
