"""What the network sees of a photo: colour modes, EXIF orientation, box crops, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from carclf.data.images import MIN_SIDE, ImageError, crop_window, load_crop, oriented_size, to_rgb

SIDE = 16  # the test pictures' size, and the crop size: load_crop then neither crops nor resamples
RNG = np.random.default_rng(7)


def _gray(values: np.ndarray) -> np.ndarray:
    """A (SIDE, SIDE) plane of 0..255 values as the (SIDE, SIDE, 3) uint8 RGB it should become."""
    return np.repeat(np.round(values).astype(np.uint8)[..., None], 3, axis=2)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb.astype(np.float64) * a + 255 * (1 - a)).astype(np.uint8)


def _mode_case(mode: str):
    """A picture file in `mode` made from random values, and the RGB it holds, computed with NumPy alone."""
    shape = (SIDE, SIDE)
    if mode == "1":
        bits = RNG.random(shape) > 0.5
        return Image.fromarray(bits), "png", _gray(bits * 255.0)
    if mode == "L":
        gray = RNG.integers(0, 256, shape, dtype=np.uint8)
        return Image.fromarray(gray), "png", _gray(gray)
    if mode == "LA":
        gray, alpha = RNG.integers(0, 256, (2, *shape), dtype=np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA"), "png", _over_white(_gray(gray), alpha)
    if mode == "RGBA":
        rgba = RNG.integers(0, 256, (*shape, 4), dtype=np.uint8)
        return Image.fromarray(rgba), "png", _over_white(rgba[..., :3], rgba[..., 3])
    if mode == "P":  # four palette colours, index 3 transparent
        palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [0, 0, 0]], np.uint8)
        indices = RNG.integers(0, 4, shape, dtype=np.uint8)
        image = Image.fromarray(indices, mode="P")
        image.putpalette(palette.tobytes())
        image.info["transparency"] = 3
        return image, "png", np.where((indices == 3)[..., None], 255, palette[indices]).astype(np.uint8)
    if mode == "CMYK":
        cmyk = RNG.integers(0, 256, (*shape, 4), dtype=np.uint8).astype(np.float64)
        rgb = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255
        return Image.fromarray(cmyk.astype(np.uint8), mode="CMYK"), "tiff", np.round(rgb).astype(np.uint8)
    if mode in ("I;16", "I;16B"):  # 16-bit: 0..65535 is 0..255
        wide = RNG.integers(0, 65536, shape).astype(np.uint16)
        raw = wide.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        return Image.frombytes(mode, shape, raw), "png" if mode == "I;16" else "tiff", _gray(wide / 257)
    if mode == "I":  # 32-bit integers holding 16-bit data
        wide = RNG.integers(0, 65536, shape).astype(np.int32)
        return Image.fromarray(wide), "tiff", _gray(wide / 257)
    if mode == "F":  # floats in 0..1
        values = RNG.random(shape).astype(np.float32)
        return Image.fromarray(values), "tiff", _gray(values.astype(np.float64) * 255)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"])
def test_every_mode_becomes_the_rgb_it_holds(tmp_path, mode):
    image, suffix, expected = _mode_case(mode)
    path = tmp_path / f"picture.{suffix}"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode  # the file really is in that mode
    crop = load_crop(path, None, SIDE)
    assert crop.dtype == np.uint8 and crop.shape == (SIDE, SIDE, 3)
    assert np.abs(crop.astype(int) - expected).max() <= 1, mode


def test_little_endian_16_bit_is_scaled_like_the_others():
    wide = RNG.integers(0, 65536, (SIDE, SIDE)).astype(np.uint16)
    image = Image.frombytes("I;16L", (SIDE, SIDE), wide.astype("<u2").tobytes())  # no format writes I;16L back
    assert np.abs(np.asarray(to_rgb(image)).astype(int) - _gray(wide / 257)).max() <= 1


def test_a_16_bit_png_is_the_8_bit_picture_not_a_white_square(tmp_path):
    """The bug this guards: Pillow's convert("RGB") clipped 16-bit values at 255."""
    eight = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.frombytes("I;16", (50, 40), (eight.astype("<u2") * 257).tobytes()).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(load_crop(tmp_path / "sixteen.png", (2, 3, 45, 38), 24),
                                  load_crop(tmp_path / "eight.png", (2, 3, 45, 38), 24))


@pytest.mark.parametrize(("mode", "values", "expected"), [
    ("I", [0, 100, 255], [0, 100, 255]),  # 8-bit data held in 32 bits
    ("I", [-1000, 0, 1000], [0, 128, 255]),  # outside 0..65535: its own range
    ("F", [0.0, 100.0, 255.0], [0, 100, 255]),  # floats on the 8-bit scale
    ("F", [-2.0, 0.0, 2.0], [0, 128, 255]),
])
def test_wide_values_take_the_smallest_range_that_holds_them(mode, values, expected):
    plane = np.resize(np.array(values, np.int32 if mode == "I" else np.float32), (SIDE, SIDE))
    rgb = np.asarray(to_rgb(Image.fromarray(plane)))
    np.testing.assert_array_equal(rgb[0, :3, 0], expected)


@pytest.mark.parametrize(("size", "box"), [((1, 1), None), ((7, 40), None), ((60, 40), (10, 10, 17, 30))])
def test_a_region_too_small_to_show_a_car_is_refused(tmp_path, size, box):
    Image.new("RGB", size, (90, 90, 90)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match=rf"tiny\.png: .* is under {MIN_SIDE} px on a side"):
        load_crop(tmp_path / "tiny.png", box, 16)
    Image.new("RGB", (MIN_SIDE, MIN_SIDE)).save(tmp_path / "smallest.png")
    assert load_crop(tmp_path / "smallest.png", None, 16).shape == (16, 16, 3)


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
