"""A trained model's folder: `model.keras`, `labels.json` and `config.json`, written and read here only.

Serving must crop a photo as training did, so a model is never saved without the settings it
trained with: `config.json` holds them (`carclf.predict` takes the box margin and whether to crop
from its `data`), and `labels.json` names the class of each output. `python -m carclf.train` and
`tuning.deliver` save through `ModelFolder.save`, `carclf.predict` reads through `ModelFolder.read`,
which checks the three files, each alone and against each other, before any is used; so the three
files are named, laid out and checked in this one place:

  labels.json  {"class_names": [...]}: output i of the model is class_names[i]
  config.json  {"hyperparameters": the search's winning values (null for a model `carclf.train` trained),
                "settings": {"data": {...}, "model": {...}, "train": {...}} (`carclf.config.RunSettings`),
                "precision": the Keras dtype policy it trained with}

Each file is written atomically (`carclf.files`), the model last: a folder that holds a model holds
its labels and settings.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from carclf.config import ConfigError, DataConfig, RunSettings, parse_section
from carclf.files import atomic_path, read_json, write_json
from carclf.runtime import resolve_precision

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
RESTORE_LABELS = f"restore the {LABELS_FILE} carclf saved with this model"


class ModelFolderError(ValueError):
    """A model folder's file is missing, misnamed or not what carclf writes; the message names the file."""


@dataclass(frozen=True)
class SavedModel:
    """What a model folder holds, its files checked against each other (`ModelFolder.read`)."""

    model: keras.Model
    class_names: list[str]  # output i is class_names[i]
    data: DataConfig | None  # the [data] settings it trained with; None for a folder without config.json

    @property
    def image_size(self) -> int:
        """The side of the square crops the model takes."""
        return int(self.model.input_shape[1])


@dataclass(frozen=True)
class ModelFolder:
    """The folder `path` holding a model (`model_name`, "model.keras" unless saved under another name)
    with its `labels.json` and `config.json`."""

    path: Path
    model_name: str = MODEL_FILE

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if not self.model_name.endswith(".keras"):  # Keras would write another format (HDF5) for another suffix
            raise ModelFolderError(f"{self.model_file}: model files must end in .keras")

    @classmethod
    def of_model(cls, model_file: str | Path) -> ModelFolder:
        """The folder of the model file `model_file`, which may have any name ending in .keras."""
        model_file = Path(model_file)
        return cls(model_file.parent, model_file.name)

    @property
    def model_file(self) -> Path:
        return self.path / self.model_name

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    def save(self, model: keras.Model, class_names: Sequence[str], settings: RunSettings,
             hyperparameters: Mapping[str, Any] | None = None) -> Path:
        """Write the labels, the settings (with the search's `hyperparameters`, if any) and then the model;
        returns the model file."""
        write_json(self.labels_file, {"class_names": list(class_names)})
        write_json(self.config_file, {"hyperparameters": dict(hyperparameters) if hyperparameters is not None else None,
                                      "settings": dataclasses.asdict(settings),
                                      "precision": resolve_precision(settings.train.precision)})
        with atomic_path(self.model_file) as partial:
            model.save(partial)
        return self.model_file

    def read(self) -> SavedModel:
        """The model (Keras' safe mode, without its training configuration), its class names and the `[data]`
        settings it trained with. Each file is checked, and the three against each other, before any is used:
        `ModelFolderError` names the file at fault. The small files are read first, so a bad one is named
        before Keras spends seconds on the model."""
        if not file_present(self.model_file, "the model"):
            raise ModelFolderError(f"{self.model_file}: model file not found")
        names = self.read_class_names()
        data = self.read_data_config()
        model = load_model(self.model_file)
        problem = carclf_model_problem(model)
        if problem:
            raise ModelFolderError(f"{self.model_file}: not a carclf classifier: {problem}")
        saved = SavedModel(model, names, data)
        together = f"copy {self.model_name}, {LABELS_FILE} and {CONFIG_FILE} of one training run together (e.g. a search's best/)"
        outputs = model.output_shape[-1]
        if len(names) != outputs:
            raise ModelFolderError(f"{self.labels_file}: names {len(names)} classes, but {self.model_name} has {outputs} outputs: "
                                   f"the labels belong to another model; {together}")
        if data is not None and data.image_size != saved.image_size:
            raise ModelFolderError(f"{self.config_file}: settings.data.image_size is {data.image_size}, but {self.model_name} takes "
                                   f"{saved.image_size}x{saved.image_size} crops: the settings belong to another model; {together}")
        return saved

    def read_class_names(self) -> list[str]:
        """The class names in `labels.json`; `ModelFolderError` when it is missing or holds anything but a list of
        distinct strings (a number or a repeated name would be served as a class)."""
        if not file_present(self.labels_file, "the model's class names"):
            raise ModelFolderError(f"{self.labels_file}: labels.json not found beside the model; carclf saves the class names "
                                   "there ({\"class_names\": [...]}) with every model it trains")
        try:
            names = read_json(self.labels_file)["class_names"]
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFolderError(f"{self.labels_file}: not a labels file (expected {{\"class_names\": [...]}}): {error}") from None
        if not isinstance(names, list):
            raise ModelFolderError(f"{self.labels_file}: not a labels file (expected {{\"class_names\": [...]}}): "
                                   f"class_names is a {type(names).__name__}")
        first = {}  # each name's first index: output i answers class_names[i], so two outputs cannot share one
        for index, name in enumerate(names):
            if not isinstance(name, str):
                raise ModelFolderError(f"{self.labels_file}: class_names[{index}] is {json.dumps(name)}, not a class name (a string); "
                                       f"{RESTORE_LABELS}")
            if name in first:
                raise ModelFolderError(f"{self.labels_file}: class_names[{first[name]}] and class_names[{index}] are both {name!r}; "
                                       f"each output needs a name of its own: {RESTORE_LABELS}")
            first[name] = index
        return names

    def read_data_config(self) -> DataConfig | None:
        """The `[data]` settings the model trained with, from `config.json`; None when there is no config.json
        (models carclf.train saved before it wrote one). A config.json that is not carclf's is an error."""
        if not file_present(self.config_file, "the model's config file (the settings it trained with)"):
            return None
        where = f"{self.config_file} settings.data"
        try:
            table = read_json(self.config_file)["settings"]["data"]
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFolderError(f"{self.config_file}: not a carclf config file (expected {{\"settings\": {{\"data\": "
                                   f"{{...}}}}}}): {error}") from None
        try:
            return parse_section(DataConfig, table, where)
        except ConfigError as error:
            raise ModelFolderError(str(error)) from None


def file_present(path: Path, what: str) -> bool:
    """Whether the file `path`, where carclf keeps `what`, is there: False when nothing is, `ModelFolderError` when
    something else is (a folder), which "not found" would misname."""
    if path.is_file():
        return True
    if path.exists():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ModelFolderError(f"{path}: {kind}, where carclf expects {what}; "
                               f"remove it and put the {path.name} saved with the model there")
    return False


def load_model(path: Path) -> keras.Model:
    """The model at `path`, in Keras' safe mode, or `ModelFolderError`: a file that is not a whole `.keras`
    archive (0 bytes, truncated, another kind of file) is called damaged; Keras itself says "File not found".

    Keras (and so TensorFlow) is imported here, not at the top of the module, so `--help` and argument
    errors answer before its seconds of start-up. carclf's layers are imported by name too: run from a
    folder holding a checkout named `carclf`, that folder shadows the package's `__init__` (a namespace
    package), which then never registers them."""
    import keras

    import carclf.layers  # noqa: F401  (registers carclf's Keras objects, whatever ran carclf's __init__)

    if not zipfile.is_zipfile(path):
        raise ModelFolderError(f"{path}: damaged, or not a .keras model: not a zip archive ({path.stat().st_size} bytes)")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (KeyError, zipfile.BadZipFile) as error:  # an archive without the members a .keras file has, or a bad one
        raise ModelFolderError(f"{path}: damaged, or not a .keras model: {error}") from None
    except (ValueError, OSError, TypeError) as error:
        raise ModelFolderError(f"{path}: not a model Keras can load safely: {error}") from None


def carclf_model_problem(model: keras.Model) -> str | None:
    """Why `model` is not a classifier as `carclf.model` builds it, or None: one uint8 (size, size, 3)
    image input, carclf's augmentation and preprocessing layers, one (classes) output."""
    from carclf.layers import RandomFlipRotation, ResNetPreprocessing

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return f"expected one image input and one output, got {len(model.inputs)} input(s) and {len(model.outputs)} output(s)"
    image, output = model.inputs[0], model.outputs[0]
    shape = tuple(image.shape[1:])
    if image.dtype != "uint8" or len(shape) != 3 or shape[0] is None or shape[0] != shape[1] or shape[2] != 3:
        return f"expected a uint8 (size, size, 3) image input, got {image.dtype} {shape}"
    missing = [kind.__name__ for kind in (RandomFlipRotation, ResNetPreprocessing)
               if not any(isinstance(layer, kind) for layer in model.layers)]
    if missing:
        return f"expected carclf's input layers (augmentation, then ResNet50 preprocessing), but it lacks {', '.join(missing)}"
    if len(output.shape) != 2:
        return f"expected one score per class, got an output of shape {tuple(output.shape[1:])}"
    return None
