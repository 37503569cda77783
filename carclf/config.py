"""Configuration of one training run: plain dataclasses, validated once, with errors naming the key.

The experiment file (`experiments/*.toml`) holds one table per concern. `carclf` owns the tables
that describe a single training run (`[data]`, `[model]`, `[train]`); `tuning` adds the search,
scheduler, resources and run tables on top with the same machinery (`parse_section`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from carclf.files import absolute_path, cache_root, plain_value

DATA_FORMATS = ("synthetic", "devkit", "csv", "folders")
MAX_UNFREEZE_DEPTH = 16
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
NAMED_WEIGHTS = ("imagenet", "synthetic", "none")  # model.weights that name a source rather than a file
# What every training epoch reports, and which way is better (a search metric must be one of them).
METRIC_MODES = {"val_accuracy": "max", "val_top5_accuracy": "max", "val_loss": "min",
                "accuracy": "max", "top5_accuracy": "max", "loss": "min"}


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and what the network sees of them (see `carclf.data.images`)."""

    format: str = "synthetic"
    root: str = ""
    csv_file: str = ""
    image_size: int = 224
    crop_to_bbox: bool = True
    bbox_margin: float = 0.05
    validation_fraction: float = 0.2
    seed: int = 0
    horizontal_flip: bool = True
    rotation_degrees: float = 20.0
    skip_bad_rows: bool = False
    cache_dir: str = ""  # decoded stores and cached features (default ~/.cache/carclf)

    def check(self) -> None:
        _require(self.format in DATA_FORMATS, "format", f"must be one of {DATA_FORMATS}, got {self.format!r}")
        _require(self.format == "synthetic" or self.root != "", "root", f"is required for format {self.format!r}")
        _require(self.format != "csv" or self.csv_file != "", "csv_file", "is required for format 'csv'")
        _require(16 <= self.image_size <= 1024, "image_size", f"must be in 16..1024, got {self.image_size}")
        _require(0.0 <= self.bbox_margin <= 1.0, "bbox_margin", f"must be in 0..1, got {self.bbox_margin}")
        _require(
            0.0 < self.validation_fraction < 1.0,
            "validation_fraction",
            f"must be strictly between 0 and 1, got {self.validation_fraction}",
        )
        _require(0.0 <= self.rotation_degrees <= 180.0, "rotation_degrees", f"must be in 0..180, got {self.rotation_degrees}")


@dataclass(frozen=True)
class ModelConfig:
    """The classifier: backbone weights and head."""

    weights: str = "imagenet"  # "imagenet", "synthetic" (carclf's own pretrained backbone), "none", or a file
    dropout: float = 0.2

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from trained weights (anything but "none")."""
        return self.weights.lower() != "none"

    @property
    def weights_file(self) -> bool:
        """Whether `weights` names a file rather than a source ("imagenet", "synthetic", "none")."""
        return self.weights.lower() not in NAMED_WEIGHTS

    def check(self) -> None:
        _require(self.weights != "", "weights", "must be 'imagenet', 'synthetic', 'none' or a path to a weights file")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run's hyperparameters; the search overrides some of them per trial."""

    epochs: int = 10
    epoch_images: int = 0  # training images per epoch, whatever the batch size; 0: one pass (see carclf.data.batches)
    batch_size: int = 32
    learning_rate: float = 0.005
    lr_decay: float = 1e-4
    unfreeze_depth: int = 0
    head_epochs: int = 0  # two-phase fine-tuning: this many head-only epochs first
    fine_tune_lr_scale: float = 0.1  # the learning rate of the fine-tuning phase, relative to learning_rate
    momentum: float = 0.9
    label_smoothing: float = 0.0
    seed: int = 0
    feature_views: int = 4  # head-only epochs train on cached backbone features of this many augmented views (0: off)
    precision: str = "auto"  # "auto": mixed bfloat16 where the GPU supports it, float32 on CPU

    def check(self) -> None:
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.epoch_images >= 0, "epoch_images", f"must be >= 0, got {self.epoch_images}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(self.lr_decay >= 0, "lr_decay", f"must be >= 0, got {self.lr_decay}")
        check_unfreeze_depth(self.unfreeze_depth)
        _require(self.head_epochs >= 0, "head_epochs", f"must be >= 0, got {self.head_epochs}")
        _require(self.fine_tune_lr_scale > 0, "fine_tune_lr_scale", f"must be > 0, got {self.fine_tune_lr_scale}")
        _require(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        _require(self.feature_views >= 0, "feature_views", f"must be >= 0, got {self.feature_views}")
        _require(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class RunSettings:
    """Everything one training run needs besides the data: what a trial receives."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def with_hyperparameters(self, values: Mapping[str, Any]) -> RunSettings:
        """Return a copy where `values` (a trial's sampled settings) replace model or train fields."""
        unknown = set(values) - set(TUNABLE_KEYS)
        if unknown:
            raise ConfigError(f"not tunable: {sorted(unknown)}; the tunable keys are {sorted(TUNABLE_KEYS)}")
        values = {key: _as_type(key, plain_value(value)) for key, value in values.items()}
        model = dataclasses.replace(self.model, **{k: v for k, v in values.items() if k in MODEL_TUNABLE})
        train = dataclasses.replace(self.train, **{k: v for k, v in values.items() if k not in MODEL_TUNABLE})
        model.check()
        train.check()
        return dataclasses.replace(self, model=model, train=train)

    def with_train(self, **values: Any) -> RunSettings:
        """A copy with some `[train]` values replaced (and checked)."""
        train = dataclasses.replace(self.train, **values)
        train.check()
        return dataclasses.replace(self, train=train)


# What a search may tune, with each key's type. The others ([train] epochs, seed, epoch_images,
# feature_views, precision) are settings of the whole search, not choices between trials.
TUNABLE_KEYS: dict[str, type] = {
    "batch_size": int, "learning_rate": float, "lr_decay": float, "unfreeze_depth": int, "head_epochs": int,
    "fine_tune_lr_scale": float, "momentum": float, "label_smoothing": float, "dropout": float,
}
MODEL_TUNABLE = ("dropout",)
RUN_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _as_type(key: str, value: Any) -> Any:
    """A sampled value as its key's type: an int key refuses 2.5 (and takes 2.0 as 2), a float key takes 2."""
    kind = TUNABLE_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{key} takes whole numbers, got {value!r}")
        return int(value)
    return float(value)


def check_unfreeze_depth(depth: int) -> None:
    _require(
        0 <= depth <= MAX_UNFREEZE_DEPTH,
        "unfreeze_depth",
        f"must be in 0..{MAX_UNFREEZE_DEPTH} (ResNet50 residual blocks from the top), got {depth}",
    )


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key} {message}")


def _type_matches(value: Any, annotation: Any) -> bool:
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    return isinstance(value, annotation)


def parse_section(cls: type, table: Any, where: str) -> Any:
    """Build dataclass `cls` from a TOML table, rejecting unknown keys and wrong types.

    `where` names the file and table in every error, e.g. ``experiments/demo.toml [train]``.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    values = {}
    for key, value in table.items():
        if not _type_matches(value, hints[key]):
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{where}: key {key!r} must be {expected}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML has inf and nan; no setting means them
            raise ConfigError(f"{where}: key {key!r} must be a finite number, got {value}")
        values[key] = float(value) if hints[key] is float else value
    section = cls(**values)
    check = getattr(section, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as error:
            raise ConfigError(f"{where}: key {error}") from None
    return section


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file as plain data, with the file named in any error: not found, not readable,
    not UTF-8 (TOML is UTF-8 by definition; an editor may have saved latin-1 or UTF-16), bad syntax."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the experiment file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start:error.start + 1]!r}); "
                          "TOML files must be UTF-8: save it as UTF-8 in your editor") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def apply_overrides(document: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as TOML, bare words as strings).

    A key may go deeper (`search.space.batch_size={ choice = [16, 32] }`); an array of tables such as
    `[[search.start]]` is entered by the index of one table (`search.start.0.batch_size=16`)."""
    merged = {name: dict(table) if isinstance(table, dict) else table for name, table in document.items()}
    for item in overrides:
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"{where}: override {item!r} must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: override {item!r}: [{section}] is not a table")
        _set_dotted(table, [section, *key.split(".")], value, f"{where}: override {item!r}")
    return merged


def _set_dotted(table: dict[str, Any], path: list[str], value: Any, context: str) -> None:
    """Set `value` at `path[1:]` under `table` (the table `path[0]`), copying each table or array passed through,
    so the document overridden is left as it was."""
    node: Any = table
    for depth, key in enumerate(path[1:], start=1):
        here, last = ".".join(path[:depth]), depth == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit():
                raise ConfigError(f"{context}: {here} is an array of tables; give the index of one ({here}.0.{key}=...) "
                                  f"or the whole array ({here}=[{{ ... }}])")
            if int(key) >= len(node):
                indices = f", indexed 0..{len(node) - 1}" if node else ""
                raise ConfigError(f"{context}: {here} has {len(node)} table(s){indices}; there is no index {key}")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"{context}: {here} is {type(node).__name__} {node!r}, not a table")
        if last:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key, {})
        node[key] = list(child) if isinstance(child, list) else dict(child) if isinstance(child, dict) else child
        node = node[key]


def parse_run_settings(document: Mapping[str, Any], where: str) -> RunSettings:
    """The `[data]`, `[model]` and `[train]` tables of an experiment document as `RunSettings`, with absolute paths."""
    sections = {
        name: parse_section(cls, document.get(name, {}), f"{where} [{name}]") for name, cls in RUN_SECTIONS.items()
    }
    return with_absolute_paths(RunSettings(**sections), where)


def with_absolute_paths(settings: RunSettings, where: str) -> RunSettings:
    """`settings` with every path absolute, resolved once against this process's working folder: `data.root`,
    a weights file, and `data.cache_dir` (the default cache, `$XDG_CACHE_HOME/carclf`, where it is empty).

    A trial runs in a Ray worker whose working folder is Ray's, so a relative path would name another
    place there. A cache folder that is a file is refused here, naming the key (or the variable)."""
    data, model = settings.data, settings.model
    cache = cache_root(data.cache_dir)
    if cache.exists() and not cache.is_dir():
        source = "key cache_dir" if data.cache_dir else "the default cache folder ($XDG_CACHE_HOME/carclf)"
        raise ConfigError(f"{where} [data]: {source}: {cache} is a file, not a folder; set data.cache_dir to a folder")
    data = dataclasses.replace(data, root=str(absolute_path(data.root)) if data.root else "", cache_dir=str(cache))
    weights = str(absolute_path(model.weights)) if model.weights_file else model.weights
    return dataclasses.replace(settings, data=data, model=dataclasses.replace(model, weights=weights))
