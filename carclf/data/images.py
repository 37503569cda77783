"""What the network sees of a photo: one definition, used by the decoded store and by `carclf.predict`.

Decode with Pillow, turn the picture upright as its EXIF orientation says (phone photos are often
stored sideways with a tag), convert to 8-bit RGB (`to_rgb`: every Pillow mode, 16-bit and float
images scaled rather than clipped, transparency over white), crop to the bounding box plus a
margin, and resize to a square of `image_size` pixels, as uint8 RGB. Boxes are in the upright
picture's pixels, as an image viewer shows it. A region (the box, or the whole picture without
one) under `MIN_SIDE` pixels on a side is refused: too few pixels to show a car. Augmentation and
the ResNet50 preprocessing happen later, inside the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from carclf.data.table import DatasetError

# EXIF orientations 5 to 8 turn the picture by 90 degrees, so its width and height swap.
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
# The errors Pillow raises for a file that is not a readable image (truncated, unknown format...).
PILLOW_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# The smallest region (box, or whole picture) worth a crop: below it the resize invents the car.
MIN_SIDE = 8
# Modes wider than 8 bits, and the ranges their values are read in, smallest first: a picture takes
# the first range that holds all its values (16-bit modes: 0..65535; 32-bit integers: 8- or 16-bit
# data stored wide; floats: 0..1 or 0..255), and its own min..max when none does.
WIDE_RANGES = {"I;16": (65535,), "I;16L": (65535,), "I;16B": (65535,), "I;16N": (65535,),
               "I": (255, 65535), "F": (1.0, 255.0)}
BACKGROUND = (255, 255, 255, 255)  # transparent pixels are seen over white, as a viewer shows them

Box = Sequence[float]


class ImageError(DatasetError):
    """An image cannot be read, or its box does not fit it; the message names the file."""


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright picture, read from the header without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return oriented_size_of(image)
    except PILLOW_ERRORS as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


def oriented_size_of(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an open image once turned upright by its EXIF orientation."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return (image.height, image.width) if orientation in TRANSPOSED_ORIENTATIONS else (image.width, image.height)


def region_problem(box: Box | None, width: int, height: int) -> tuple[str, str] | None:
    """Why `box` (x1, y1, x2, y2; None: the whole picture) cannot be cropped from a `width` x `height`
    picture, as (kind, detail), or None. The kinds group the rows a dataset check reports."""
    if box is None:
        x1, y1, x2, y2 = 0, 0, width, height
        what = f"the {width}x{height} image"
    else:
        x1, y1, x2, y2 = box
        what = f"box ({x1}, {y1}, {x2}, {y2})"
        if x2 <= x1 or y2 <= y1:
            return "empty bounding box", f"{what} is empty (needs x1 < x2 and y1 < y2)"
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            return "bounding box outside the image", f"{what} does not fit in the {width}x{height} image"
    if min(x2 - x1, y2 - y1) < MIN_SIDE:
        return "too small to show a car", f"{what} is under {MIN_SIDE} px on a side"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, whatever its Pillow mode.

    Pillow's own `convert("RGB")` clips 16-bit and 32-bit values at 255 (a 16-bit photo becomes
    white) and drops transparency (hidden pixels show whatever colour they hold). Here wide modes
    are scaled from their range (`WIDE_RANGES`; non-finite floats read as 0), and transparent
    pixels are composited over white. Every other mode (1, L, P, RGB, CMYK, YCbCr...) is Pillow's
    conversion.
    """
    if image.mode in WIDE_RANGES:  # float32: exact for 16-bit values, half float64's memory on a large picture
        values = np.asarray(image, dtype=np.float32)
        values = np.where(np.isfinite(values), values, np.float32(0))
        return Image.fromarray(scale_to_8bit(values, WIDE_RANGES[image.mode])).convert("RGB")
    if image.has_transparency_data:
        return Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def scale_to_8bit(values: np.ndarray, ranges: Sequence[float]) -> np.ndarray:
    """`values` mapped linearly onto 0..255: from 0..top for the first of `ranges` that holds them all,
    else from their own min..max."""
    low, high = float(values.min()), float(values.max())
    top = next((top for top in ranges if low >= 0 and high <= top), None)
    if top is not None:
        low, high = 0.0, top
    return np.round((values - low) * (255 / ((high - low) or 1.0))).astype(np.uint8)


def crop_window(box: Box | None, width: int, height: int, margin: float) -> tuple[float, float, float, float]:
    """The region to resize: `box` grown by `margin` of its size on each side and kept inside the
    picture, or the whole picture when there is no box."""
    if box is None:
        return 0.0, 0.0, float(width), float(height)
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
    return max(0.0, x1 - pad_x), max(0.0, y1 - pad_y), min(float(width), x2 + pad_x), min(float(height), y2 + pad_y)


def load_crop(path: str | Path, box: Box | None, image_size: int, margin: float = 0.05) -> np.ndarray:
    """The upright picture's `box` (plus `margin`) resized to (image_size, image_size, 3) uint8 RGB.

    `box` None uses the whole picture. JPEGs are decoded at a reduced scale when the crop is
    still at least `image_size` pixels across at that scale (Pillow's `draft`), which makes large
    photos several times faster to read and changes the result less than the final resize does.
    Raises `ImageError` naming the file for a missing or unreadable image (or a folder given as one),
    or a region that does not fit or is too small (`region_problem`).
    """
    if Path(path).is_dir():  # "not found" would send the user looking for a file that is there
        raise ImageError(f"{path}: a folder, not an image file; give the image files in it (e.g. {Path(path) / '*.jpg'})")
    if not Path(path).is_file():
        raise ImageError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            full_width, full_height = oriented_size_of(image)
            problem = region_problem(box, full_width, full_height)
            if problem:
                raise ImageError(f"{path}: {problem[1]}")
            window = crop_window(box, full_width, full_height, margin)
            scale = image_size / max(1.0, min(window[2] - window[0], window[3] - window[1]))
            if scale < 1:
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            upright = to_rgb(ImageOps.exif_transpose(image))
            shrink_x, shrink_y = upright.width / full_width, upright.height / full_height
            # Whole pixels: cropping first keeps pixels outside the window out of the resize filter.
            left, top = math.floor(window[0] * shrink_x), math.floor(window[1] * shrink_y)
            right = max(left + 1, math.ceil(window[2] * shrink_x))
            bottom = max(top + 1, math.ceil(window[3] * shrink_y))
            crop = upright.crop((left, top, right, bottom)).resize((image_size, image_size), Image.Resampling.BILINEAR)
    except ImageError:
        raise
    except PILLOW_ERRORS as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    return np.asarray(crop, dtype=np.uint8)
