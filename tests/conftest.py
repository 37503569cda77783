"""Shared fixtures: tiny synthetic datasets, photos made here, settings for fast runs, the synthetic
pretrained backbone, Ray, and the real Stanford Cars files of the optional `shared_data` lane.

Tests never write to the user's caches. Before anything loads, `XDG_CACHE_HOME` and `KERAS_HOME` point
at a cache home made for the test runs in the system's temporary folder (child processes and Ray's
workers inherit it): carclf's cache, Keras' `keras.json`, JAX's compilation cache. There the synthetic
backbone, keyed by its recipe, outlives one session, so the TensorFlow and JAX lanes build it once.
The session's decoded stores and features go to a temporary folder of their own (`data.cache_dir`).

Every test makes its own data, so a fresh clone runs them all. Only the tests marked `shared_data`
read the real files in `../shared/data/stanford_cars` (another folder: `$CARCLF_SHARED_CARS`), through
`real_devkit` and `real_samples`; without those files they are skipped, saying what did not run.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TEST_CACHE_HOME = Path(tempfile.gettempdir()) / f"carclf-test-cache-{getpass.getuser()}"
os.environ["XDG_CACHE_HOME"] = str(TEST_CACHE_HOME)
os.environ["KERAS_HOME"] = str(TEST_CACHE_HOME / "keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from carclf.config import DataConfig, ModelConfig, RunSettings, TrainConfig  # noqa: E402
from carclf.data.sources import prepare_dataset  # noqa: E402
from carclf.data.synthetic import SyntheticSpec, draw_car, generate_synthetic_cars  # noqa: E402
from carclf.files import cache_home  # noqa: E402
from tests.helpers import REPO  # noqa: E402

SHARED_CARS = Path(os.environ.get("CARCLF_SHARED_CARS") or REPO.parent / "shared" / "data" / "stanford_cars")
TINY_SPEC = SyntheticSpec(num_classes=4, train_per_class=10, test_per_class=3, width_range=(64, 80), height_range=(48, 60), seed=3)
BACKBONE_CACHE = str(cache_home())  # the test runs' cache home (above): the synthetic backbone outlives a session


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache folder for the session's decoded stores and features."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_cars(tmp_path_factory) -> Path:
    """A 4-class synthetic devkit dataset: 40 training and 12 test images of about 70x55 px."""
    return generate_synthetic_cars(tmp_path_factory.mktemp("tiny_cars"), TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_settings(tiny_cars, session_cache) -> RunSettings:
    """Settings that train a ResNet50 in seconds: 32 px, random weights, the top two blocks trained."""
    return RunSettings(
        data=DataConfig(format="devkit", root=str(tiny_cars), image_size=32, validation_fraction=0.25, cache_dir=str(session_cache)),
        model=ModelConfig(weights="none", dropout=0.0),
        train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.001, lr_decay=1e-4, unfreeze_depth=2, precision="float32"),
    )


@pytest.fixture(scope="session")
def tiny_dataset(tiny_settings):
    """The tiny dataset indexed, checked, split (32 train, 8 val, 12 test) and decoded into its store."""
    return prepare_dataset(tiny_settings.data)


@pytest.fixture(scope="session")
def tiny_index(tiny_dataset):
    return tiny_dataset.index


@pytest.fixture(scope="session")
def synthetic_backbone(tiny_settings) -> Path:
    """carclf's synthetic pretrained ResNet50 at 32 px, built once (about 20 CPU seconds) and cached by its recipe."""
    from carclf.pretrained import synthetic_backbone
    from carclf.runtime import configure_process

    settings = RunSettings(data=DataConfig(image_size=32, cache_dir=BACKBONE_CACHE), train=TrainConfig(precision="float32"))
    configure_process(2, seed=0)
    return synthetic_backbone(settings)


@dataclass(frozen=True)
class Photos:
    """Car photos made with Pillow, of the shapes a user gives predict."""

    car: Path  # a 224x224 JPEG
    car_box: tuple[int, int, int, int]  # the car's box in it
    sideways: Path  # the car's pixels turned a quarter, with the EXIF Orientation tag that turns them upright
    wide: Path  # 333x91
    tall: Path  # 17x250

    @property
    def all(self) -> list[Path]:
        return [self.car, self.sideways, self.wide, self.tall]


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Photos:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    car, box = draw_car(rng, 0, 224, 224)
    car.save(folder / "car.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(car), 1))).save(folder / "sideways.png", exif=exif)
    draw_car(rng, 1, 333, 91)[0].save(folder / "wide.png")
    draw_car(rng, 2, 68, 250)[0].resize((17, 250)).save(folder / "tall.jpg", quality=90)  # drawn wider: the drawing needs 20 px
    return Photos(folder / "car.jpg", box, folder / "sideways.png", folder / "wide.png", folder / "tall.jpg")


def shared_cars(request, relative: str) -> Path:
    """`SHARED_CARS / relative` for a test of the `shared_data` lane, which is skipped, saying what did not run, without it."""
    if request.node.get_closest_marker("shared_data") is None:
        pytest.fail(f"{request.node.name} reads the real files in {SHARED_CARS}: mark it @pytest.mark.shared_data, "
                    "so that the other tests run on a fresh clone without them", pytrace=False)
    path = SHARED_CARS / relative
    if not path.exists():
        pytest.skip(f"optional shared_data lane: {path} not found (the real Stanford Cars files, in ../shared/data/stanford_cars "
                    f"or $CARCLF_SHARED_CARS), so {request.node.name} did not run on them")
    return path


@pytest.fixture
def real_devkit(request) -> Path:
    """The folder of the real Stanford Cars devkit annotation files (no images)."""
    return shared_cars(request, "devkit/cars_meta.mat").parent


@pytest.fixture
def real_samples(request) -> list[Path]:
    """Three real car photos from the dataset, 224x224 JPEGs."""
    return sorted(shared_cars(request, "samples").glob("*.jpg"))


@pytest.fixture
def ray_cluster():
    """A real local Ray cluster of 2 CPUs, always shut down."""
    import keras
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": keras.backend.backend()}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> str:
    """An S3-compatible server (moto's, a real HTTP server) on 127.0.0.1 for the session; its endpoint URL."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in a failing test's log
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A new bucket on `s3_server`, configured the way AWS tools are, through the environment (which the commands a test
    runs and their Ray workers inherit); its `s3://` URI."""
    import uuid

    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "carclf-test", "AWS_SECRET_ACCESS_KEY": "carclf-test-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    bucket = f"carclf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
