"""Experiment files: TOML → validated dataclasses, before Ray ever starts.

An experiment file has the run tables of `carclf.config` (`[data]`, `[model]`, `[train]`) and
the tables of the search: `[search]` (with `[search.space]` and `[[search.start]]`),
`[scheduler]` (ASHA), `[resources]` and `[run]`. Unknown keys, wrong types and impossible values
are errors naming the file and the key. `[search.space]` is parsed by `tuning.search_space`, which
refuses a distribution that does not fit its hyperparameter and a key that is not tunable.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carclf.config import (
    METRIC_MODES,
    RUN_SECTIONS,
    ConfigError,
    RunSettings,
    apply_overrides,
    parse_run_settings,
    parse_section,
    read_toml,
)
from carclf.files import absolute_path
from carclf.object_storage import is_uri
from tuning.run_storage import RunPlace, run_location
from tuning.search_space import SearchSpace, check_start_points, parse_space
from tuning.stopped_trials import STOPPED_TRIALS
from tuning.study_storage import check_storage_setting, resolved_storage

EXPERIMENTS = Path(str(importlib.resources.files("tuning.experiments")))
DEMO_EXPERIMENT = EXPERIMENTS / "demo.toml"
ALGORITHMS = ("auto", "tpe", "gp", "random")  # Optuna's samplers; auto: chosen by the search's size (tuning.samplers)
SCHEDULERS = ("asha", "none")  # none: every trial runs all epochs
DELIVERIES = ("train+val", "trial", "none")  # run.retrain: the model a run delivers (tuning.deliver); true, false: the first, the last


@dataclass(frozen=True)
class SearchConfig:
    """How many trials, how many at once, what to optimise, and the space to search."""

    algorithm: str = "auto"
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    metric: str = "val_accuracy"
    mode: str = ""  # "max" or "min"; empty: the metric's own direction
    startup_trials: int = 0  # Optuna's random start-up trials before TPE; 0: a third of num_samples, 2..10
    time_budget_s: float = 0.0  # 0: no budget
    space: SearchSpace = SearchSpace()
    start: list = field(default_factory=list)
    storage: str = ""  # where the study is written: an Optuna storage URL or a journal file; empty: study.db in the run folder
    stopped_trials: str = "sampler"  # what the sampler is told of a trial ASHA stopped (tuning.stopped_trials)

    def check(self) -> None:
        if self.algorithm == "optuna":
            raise ConfigError("algorithm 'optuna' is now named 'tpe' (Optuna's TPE sampler); or use 'auto', 'gp' or 'random'")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.metric not in METRIC_MODES:
            raise ConfigError(f"metric {self.metric!r} is not reported by the trials; they report {sorted(METRIC_MODES)}")
        if self.mode not in ("", METRIC_MODES[self.metric]):
            raise ConfigError(f"mode {self.mode!r} does not fit metric {self.metric!r}, which is better "
                              f"{'higher' if METRIC_MODES[self.metric] == 'max' else 'lower'} (mode {METRIC_MODES[self.metric]!r})")
        if self.stopped_trials not in STOPPED_TRIALS:
            raise ConfigError(f"stopped_trials must be one of {STOPPED_TRIALS}, got {self.stopped_trials!r}")
        if self.startup_trials < 0:
            raise ConfigError(f"startup_trials must be >= 0, got {self.startup_trials}")
        if self.time_budget_s < 0:
            raise ConfigError(f"time_budget_s must be >= 0, got {self.time_budget_s}")
        if not self.space:
            raise ConfigError("space must name at least one hyperparameter ([search.space])")
        try:
            check_storage_setting(self.storage)
        except ValueError as error:
            raise ConfigError(f"storage: {error}") from None

    @property
    def direction(self) -> str:
        """"max" or "min": the mode given, or the metric's own."""
        return self.mode or METRIC_MODES[self.metric]

    @property
    def optuna_startup_trials(self) -> int:
        """Random trials before the sampler starts modelling: the setting, or a third of the search, 2..10."""
        return self.startup_trials or max(2, min(10, self.num_samples // 3))


@dataclass(frozen=True)
class SchedulerConfig:
    """ASHA (`tuning.scheduler`): a trial trains at most `max_epochs`; rungs start at `grace_period` epochs of a
    trial's final phase (after any head-only warm-up); a trial within `noise_z` standard errors of a rung's cut
    goes on. `kind = "none"` stops nothing early."""

    kind: str = "asha"
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0
    noise_z: float = 1.0  # 0: stop on the cut alone, as plain ASHA

    def check(self) -> None:
        if self.kind not in SCHEDULERS:
            raise ConfigError(f"kind must be one of {SCHEDULERS}, got {self.kind!r}")
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise ConfigError(f"grace_period must be in 1..max_epochs ({self.max_epochs}), got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor must be > 1, got {self.reduction_factor}")
        if not 0 <= self.noise_z <= 10:
            raise ConfigError(f"noise_z must be in 0..10 (standard errors), got {self.noise_z}")


@dataclass(frozen=True)
class ResourcesConfig:
    """What one trial reserves; fractional GPUs let several trials share a card, each with its share of memory."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def check(self) -> None:
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"gpus_per_trial above 1 must be a whole number, got {self.gpus_per_trial}")


@dataclass(frozen=True)
class OutputConfig:
    """Where the run lives (`storage_path/name`), checkpoints kept and how often, retries, the model
    delivered (`retrain`), and whether trial workers are reused (`tuning.trainable`)."""

    storage_path: str = "runs"
    name: str = ""  # default: the experiment file's name
    checkpoints_to_keep: int = 1
    checkpoint_minutes: float = 10.0  # a trial checkpoints at its end and at most this often
    max_failures: int = 2
    retrain: str | bool = "train+val"  # one of DELIVERIES; true and false, as before, mean "train+val" and "none"
    reuse_workers: bool = True  # a worker runs trial after trial, compiled models kept (Ray Tune's reuse_actors)

    @property
    def delivery(self) -> str:
        """The model the run delivers, one of `DELIVERIES`."""
        if isinstance(self.retrain, bool):
            return DELIVERIES[0] if self.retrain else DELIVERIES[-1]
        return self.retrain

    def check(self) -> None:
        if self.delivery not in DELIVERIES:
            raise ConfigError(f"retrain must be one of {DELIVERIES} (or true, false), got {self.retrain!r}")
        if self.checkpoints_to_keep < 1:
            raise ConfigError(f"checkpoints_to_keep must be >= 1, got {self.checkpoints_to_keep}")
        if self.checkpoint_minutes <= 0:
            raise ConfigError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")
        if "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name must be a plain folder name, got {self.name!r}")


SEARCH_SECTIONS = {"search": SearchConfig, "scheduler": SchedulerConfig, "resources": ResourcesConfig, "run": OutputConfig}


@dataclass(frozen=True)
class Experiment:
    """A whole experiment: the run settings every trial starts from, and the search around them."""

    source: str
    settings: RunSettings
    search: SearchConfig
    scheduler: SchedulerConfig
    resources: ResourcesConfig
    run: OutputConfig

    @property
    def name(self) -> str:
        return self.run.name or Path(self.source).stem

    @property
    def run_dir(self) -> Path:
        """The run's folder on this machine: the run itself, or the mirror of a run kept on object storage (`run_place`)."""
        return self.run_place.local

    @property
    def run_place(self) -> RunPlace:
        """Where the run lives (`tuning.run_storage`): `storage_path/name`, a local folder or a URI."""
        storage = self.run.storage_path
        return RunPlace.at(run_location(storage, self.name) if is_uri(storage) else Path(storage).expanduser().resolve() / self.name)

    def with_settings(self, settings: RunSettings) -> Experiment:
        """The same experiment with other run settings (the epoch budget, the weights file resolved)."""
        return dataclasses.replace(self, settings=settings)

    def trial_settings(self) -> RunSettings:
        """Settings a trial starts from: the search trains up to the scheduler's `max_epochs`."""
        return self.settings.with_train(epochs=self.scheduler.max_epochs)

    def batch_sizes(self) -> list[int]:
        """Every batch size a trial may use (for equal epochs, `carclf.data.batches.epoch_images`)."""
        return [int(v) for v in self.possible_values("batch_size")]

    def possible_values(self, key: str) -> list:
        """The values a trial may take for a `[train]` key: the fixed one, a choice, or a randint's range;
        a float range as its two ends."""
        dimension = self.search.space.get(key)
        return [getattr(self.settings.train, key)] if dimension is None else dimension.values()

    def warm_up_epochs(self) -> int:
        """The most head-only warm-up epochs a two-phase trial may train before it fine-tunes (0: none)."""
        if not any(depth > 0 for depth in self.possible_values("unfreeze_depth")):
            return 0
        return max(int(v) for v in self.possible_values("head_epochs"))

    def nothing_to_choose(self) -> bool:
        """True when every hyperparameter in the space has a single value."""
        return self.search.space.is_single_point

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a document `experiment_from_document` reads back (the run name resolved)."""
        document = {name: dataclasses.asdict(getattr(self, name)) for name in SEARCH_SECTIONS}
        document["search"]["space"] = self.search.space.to_dict()
        document["run"]["name"] = self.name
        return {"source": self.source, **dataclasses.asdict(self.settings), **document}


def shipped_experiments() -> list[str]:
    return sorted(path.stem for path in EXPERIMENTS.glob("*.toml"))


def experiment_path(name: str | Path) -> Path:
    """The file an `--experiment` value names: the path as given where it exists, else, for a bare name
    (`stanford_cars` or `stanford_cars.toml`), the experiment shipped in `tuning.experiments`, which is
    where a non-editable install keeps them. A name that is neither says which experiments ship."""
    path = Path(name)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = EXPERIMENTS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{name}: experiment file not found, and no shipped experiment has this name "
                      f"(shipped: {', '.join(shipped_experiments())})")


def load_experiment(path: str | Path = DEMO_EXPERIMENT, overrides: list[str] | None = None) -> Experiment:
    """Read, override (`section.key=value`) and validate an experiment file (or a shipped one, by name)."""
    path = experiment_path(path)
    where = str(path)
    return experiment_from_document(apply_overrides(read_toml(path), overrides or [], where), where)


def experiment_from_document(document: dict[str, Any], where: str) -> Experiment:
    """Validate an experiment document (a parsed TOML file, or a saved `Experiment.to_dict()`); its
    `[search.space]` table becomes a `SearchSpace`, checked against the run settings."""
    source = document.get("source", where)
    document = {key: value for key, value in document.items() if key != "source"}
    unknown = sorted(set(document) - set(RUN_SECTIONS) - set(SEARCH_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {unknown}; expected some of {sorted([*RUN_SECTIONS, *SEARCH_SECTIONS])}")
    settings = parse_run_settings(document, where)
    tables = {name: document.get(name, {}) for name in SEARCH_SECTIONS}
    if isinstance(tables["search"], dict) and "space" in tables["search"]:
        tables["search"] = {**tables["search"], "space": parse_space(tables["search"]["space"], settings, where)}
    sections = {name: parse_section(cls, tables[name], f"{where} [{name}]") for name, cls in SEARCH_SECTIONS.items()}
    storage = sections["run"].storage_path  # made absolute once, as the settings' paths (a URI stays as it is)
    sections["run"] = dataclasses.replace(sections["run"], storage_path=storage if is_uri(storage) else str(absolute_path(storage)))
    sections["search"] = dataclasses.replace(sections["search"], storage=resolved_storage(sections["search"].storage))
    experiment = Experiment(source=source, settings=settings, **sections)
    check_start_points(experiment.search.space, experiment.search.start, experiment.trial_settings(), experiment.search.num_samples,
                       where)
    warm_up, max_epochs = experiment.warm_up_epochs(), experiment.scheduler.max_epochs
    if warm_up >= max_epochs:
        key = "[search.space] head_epochs" if "head_epochs" in experiment.search.space else "[train] head_epochs"
        raise ConfigError(f"{where} {key}: a warm-up of {warm_up} head-only epochs leaves no epoch to fine-tune within "
                          f"scheduler.max_epochs ({max_epochs}); lower head_epochs or raise max_epochs")
    return experiment
