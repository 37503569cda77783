"""A small synthetic car dataset in the Stanford Cars devkit layout, for the demo and the tests.

Ten classes of car-like drawings that differ in body shape, colour and wheel layout (up to 60 for
benchmarks: the ten bodies in more colours, up to 200), drawn at a random place and scale on varied
backgrounds, each with its bounding box. Written as
`devkit/*.mat` + `cars_train/` + `cars_test/` so the demo goes through the real devkit reader.
Deterministic from the seed; the demo's 800 small JPEGs take a few seconds.
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

# Body outlines in car-length units (x from rear 0 to front 1, y up from the ground), wheel
# centres along x, wheel radius, and base colour.
CAR_CLASSES = [
    ("Carclf Sedan Red", [(0, .12), (1, .12), (1, .3), (.8, .33), (.68, .5), (.3, .5), (.2, .33), (0, .3)], [.2, .8], .09, (200, 30, 30)),
    ("Carclf Hatchback Blue", [(0, .12), (1, .12), (1, .3), (.85, .33), (.7, .55), (.1, .55), (0, .4)], [.18, .8], .1, (30, 60, 210)),
    ("Carclf SUV Green", [(0, .16), (1, .16), (1, .62), (.12, .62), (0, .45)], [.2, .8], .14, (30, 150, 50)),
    ("Carclf Pickup Yellow", [(0, .16), (1, .16), (1, .36), (.45, .36), (.45, .62), (.2, .62), (.12, .4), (0, .38)], [.2, .8], .12, (230, 200, 30)),
    ("Carclf Van White", [(0, .12), (1, .12), (1, .72), (.15, .72), (0, .45)], [.15, .85], .09, (235, 235, 235)),
    ("Carclf Coupe Black", [(0, .1), (1, .1), (1, .25), (.75, .28), (.55, .42), (.35, .42), (.15, .28), (0, .24)], [.2, .8], .08, (25, 25, 25)),
    ("Carclf Bus Orange", [(0, .12), (1, .12), (1, .8), (0, .8)], [.12, .3, .85], .08, (240, 130, 20)),
    ("Carclf Roadster Purple", [(0, .1), (1, .1), (1, .24), (.6, .26), (.5, .38), (.45, .26), (0, .22)], [.2, .8], .09, (130, 40, 170)),
    ("Carclf Limousine Silver", [(0, .12), (1, .12), (1, .27), (.9, .29), (.82, .4), (.18, .4), (.1, .29), (0, .27)], [.1, .5, .9], .06, (170, 170, 180)),
    ("Carclf Minivan Teal", [(0, .12), (1, .12), (1, .55), (.3, .6), (.05, .45), (0, .3)], [.18, .82], .1, (20, 150, 150)),
]
# Classes beyond the first ten repeat the ten bodies in other colours: these five, then evenly
# spread hues (for benchmarks with as many classes as Stanford Cars' 196).
EXTRA_COLOURS = [("Gold", (212, 175, 55)), ("Navy", (20, 30, 110)), ("Olive", (110, 120, 30)), ("Pink", (240, 120, 170)),
                 ("Brown", (120, 70, 30))]
MAX_CLASSES = 200


def car_class(class_id: int) -> tuple:
    """(name, outline, wheels, wheel radius, colour) of class `class_id` in 0..MAX_CLASSES-1."""
    if class_id < len(CAR_CLASSES):
        return CAR_CLASSES[class_id]
    name, outline, wheels, radius, _ = CAR_CLASSES[class_id % len(CAR_CLASSES)]
    shade = class_id // len(CAR_CLASSES) - 1
    if shade < len(EXTRA_COLOURS):
        colour_name, colour = EXTRA_COLOURS[shade]
    else:
        hue = (shade * 0.618034) % 1.0  # golden-ratio steps keep neighbouring shades apart
        colour_name, colour = f"Hue {round(hue * 360)}", tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.85))
    return f"{name.rsplit(' ', 1)[0]} {colour_name}", outline, wheels, radius, colour


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the folder is regenerated only when this changes."""

    num_classes: int = 10
    train_per_class: int = 64  # the demo splits these in half: 320 validation images tell trials 4 points apart
    test_per_class: int = 16
    width_range: tuple[int, int] = (112, 160)
    height_range: tuple[int, int] = (84, 120)
    seed: int = 0


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    sky = rng.integers(60, 256, 3)
    ground = rng.integers(20, 180, 3)
    horizon = int(height * rng.uniform(0.35, 0.7))
    rows = np.linspace(0, 1, height)[:, None, None]
    pixels = np.where(np.arange(height)[:, None, None] < horizon, sky * (0.75 + 0.25 * rows), ground * np.ones((height, 1, 1)))
    pixels = np.broadcast_to(pixels, (height, width, 3)) + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4)):  # distractors: buildings, poles, trees
        x, w, h = rng.integers(0, width), rng.integers(4, width // 4), rng.integers(height // 8, horizon + 1)
        draw.rectangle([x, horizon - h, x + w, horizon], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def draw_car(rng: np.random.Generator, class_id: int, width: int, height: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw one car of `class_id` on a random background; return the image and its box (x1, y1, x2, y2)."""
    _, outline, wheels, radius, colour = car_class(class_id)
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    length = width * rng.uniform(0.45, 0.8)
    left = rng.uniform(0, width - length)
    ground = height * rng.uniform(0.75, 0.97)
    facing_right = rng.random() < 0.5

    def point(x: float, y: float) -> tuple[float, float]:
        x = x if facing_right else 1 - x
        return left + x * length, ground - y * length

    jitter = rng.integers(-25, 26, 3)
    body = tuple(int(c) for c in np.clip(np.array(colour) + jitter, 0, 255))
    body_points = [point(x, y) for x, y in outline]
    draw.polygon(body_points, fill=body, outline=(0, 0, 0))
    wheel_points = []
    for centre in wheels:
        cx, cy = point(centre, radius)
        r = radius * length
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(15, 15, 15))
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(190, 190, 190))
        wheel_points += [(cx - r, cy - r), (cx + r, cy + r)]
    xs, ys = zip(*(body_points + wheel_points))
    box = (max(0, int(min(xs))), max(0, int(min(ys))), min(width, int(np.ceil(max(xs)))), min(height, int(np.ceil(max(ys)))))
    return image, box


def write_annotations_mat(path: str | Path, records: list[dict]) -> Path:
    """A devkit annotations file: `annotations`, a 1xN struct array with the records' fields, as
    Stanford's `cars_*_annos*.mat` hold them (the tests write bad ones with it too)."""
    fields = list(records[0])
    struct = np.zeros((1, len(records)), dtype=[(name, "O") for name in fields])
    for i, record in enumerate(records):
        for name in fields:
            struct[0, i][name] = record[name]
    scipy.io.savemat(path, {"annotations": struct})
    return Path(path)


def write_class_names_mat(path: str | Path, names: list[str]) -> Path:
    """A devkit `cars_meta.mat`: `class_names`, a 1xN cell of strings, class 1 first."""
    cell = np.empty((1, len(names)), dtype=object)
    cell[0, :] = list(names)
    scipy.io.savemat(path, {"class_names": cell})
    return Path(path)


def generate_synthetic_cars(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the synthetic dataset under `root` in the devkit layout (skipped if already there)."""
    root = Path(root)
    marker = root / "synthetic.json"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        return root
    if not 1 <= spec.num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {spec.num_classes}")
    logger.info("generating the synthetic car dataset in %s", root)
    rng = np.random.default_rng(spec.seed)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for split, per_class, folder, annos in (
        ("train", spec.train_per_class, "cars_train", "cars_train_annos.mat"),
        ("test", spec.test_per_class, "cars_test", "cars_test_annos_withlabels.mat"),
    ):
        (root / folder).mkdir(exist_ok=True)
        classes = rng.permutation(np.repeat(np.arange(spec.num_classes), per_class))
        records = []
        for number, class_id in enumerate(classes, start=1):
            width = int(rng.integers(spec.width_range[0], spec.width_range[1] + 1))
            height = int(rng.integers(spec.height_range[0], spec.height_range[1] + 1))
            image, (x1, y1, x2, y2) = draw_car(rng, int(class_id), width, height)
            name = f"{number:05d}.jpg"
            image.save(root / folder / name, quality=90)
            records.append({"bbox_x1": x1, "bbox_y1": y1, "bbox_x2": x2, "bbox_y2": y2, "class": int(class_id) + 1, "fname": name})
        write_annotations_mat(root / "devkit" / annos, records)
    write_class_names_mat(root / "devkit" / "cars_meta.mat", [car_class(i)[0] for i in range(spec.num_classes)])
    marker.write_text(wanted)
    return root
