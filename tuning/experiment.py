"""Experiment files: TOML → validated dataclasses, before Ray ever starts.

An experiment file has the run tables of `carclf.config` (`[data]`, `[model]`, `[train]`) and
the tables of the search: `[search]` (with `[search.space]` and `[[search.start]]`),
`[scheduler]` (ASHA), `[resources]` and `[run]`. Unknown keys, wrong types and impossible values
are errors naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carclf.config import (
    RUN_SECTIONS,
    TUNABLE_KEYS,
    ConfigError,
    RunSettings,
    apply_overrides,
    parse_run_settings,
    parse_section,
    read_toml,
)

DEMO_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "demo.toml"
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
ALGORITHMS = ("optuna", "random")  # random: a baseline to compare Optuna's TPE against
SCHEDULERS = ("asha", "none")  # none: every trial runs all epochs
METRIC_MODES = ("max", "min")


@dataclass(frozen=True)
class SearchConfig:
    """How many trials, how many at once, what to optimise, and the space to search."""

    algorithm: str = "optuna"
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    metric: str = "val_accuracy"
    mode: str = "max"
    time_budget_s: float = 0.0  # 0: no budget
    space: dict = field(default_factory=dict)
    start: list = field(default_factory=list)

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.mode not in METRIC_MODES:
            raise ConfigError(f"mode must be one of {METRIC_MODES}, got {self.mode!r}")
        if self.time_budget_s < 0:
            raise ConfigError(f"time_budget_s must be >= 0, got {self.time_budget_s}")
        if not self.space:
            raise ConfigError("space must name at least one hyperparameter ([search.space])")


@dataclass(frozen=True)
class SchedulerConfig:
    """ASHA: a trial trains at most `max_epochs`; rungs start at `grace_period`. `kind = "none"` stops nothing early."""

    kind: str = "asha"
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0

    def check(self) -> None:
        if self.kind not in SCHEDULERS:
            raise ConfigError(f"kind must be one of {SCHEDULERS}, got {self.kind!r}")
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise ConfigError(f"grace_period must be in 1..max_epochs ({self.max_epochs}), got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class ResourcesConfig:
    """What one trial reserves; fractional GPUs let several trials share a card."""

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
    """Where the run lives (`storage_path/name`), checkpoints kept, and retries of failed trials."""

    storage_path: str = "runs"
    name: str = ""  # default: the experiment file's name
    checkpoints_to_keep: int = 1
    max_failures: int = 2
    retrain: bool = True

    def check(self) -> None:
        if self.checkpoints_to_keep < 1:
            raise ConfigError(f"checkpoints_to_keep must be >= 1, got {self.checkpoints_to_keep}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")


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
        return Path(self.run.storage_path).expanduser().resolve() / self.name

    def trial_settings(self) -> RunSettings:
        """Settings a trial starts from: the search trains up to the scheduler's `max_epochs`."""
        train = dataclasses.replace(self.settings.train, epochs=self.scheduler.max_epochs)
        return dataclasses.replace(self.settings, train=train)

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a document `experiment_from_document` reads back (the run name resolved)."""
        document = {name: dataclasses.asdict(getattr(self, name)) for name in SEARCH_SECTIONS}
        document["run"]["name"] = self.name
        return {"source": self.source, **dataclasses.asdict(self.settings), **document}


def load_experiment(path: str | Path = DEMO_EXPERIMENT, overrides: list[str] | None = None) -> Experiment:
    """Read, override (`section.key=value`) and validate an experiment file."""
    where = str(path)
    return experiment_from_document(apply_overrides(read_toml(path), overrides or [], where), where)


def experiment_from_document(document: dict[str, Any], where: str) -> Experiment:
    """Validate an experiment document (a parsed TOML file, or a saved `Experiment.to_dict()`)."""
    document = {key: value for key, value in document.items() if key != "source"}
    unknown = sorted(set(document) - set(RUN_SECTIONS) - set(SEARCH_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {unknown}; expected some of {sorted([*RUN_SECTIONS, *SEARCH_SECTIONS])}")
    settings = parse_run_settings(document, where)
    sections = {name: parse_section(cls, document.get(name, {}), f"{where} [{name}]") for name, cls in SEARCH_SECTIONS.items()}
    experiment = Experiment(source=where, settings=settings, **sections)
    check_space(experiment, where)
    return experiment


def check_space(experiment: Experiment, where: str) -> None:
    """Every distribution is well formed and every value it can take is a valid setting."""
    space = experiment.search.space
    settings = experiment.trial_settings()
    for key, spec in space.items():
        at = f"{where} [search.space] {key}"
        if key not in TUNABLE_KEYS:
            raise ConfigError(f"{at}: not a tunable key; expected one of {sorted(TUNABLE_KEYS)}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{at}: must be one distribution, e.g. {{ loguniform = [1e-4, 1e-1] }}; one of {DISTRIBUTIONS}")
        kind, args = next(iter(spec.items()))
        _check_distribution(kind, args, at)
        for value in args:
            _check_value(settings, key, value, at)
    for number, point in enumerate(experiment.search.start, start=1):
        at = f"{where} [[search.start]] #{number}"
        if not isinstance(point, dict):
            raise ConfigError(f"{at}: must be a table of hyperparameter values")
        extra = sorted(set(point) - set(space))
        if extra:
            raise ConfigError(f"{at}: key(s) {extra} are not in [search.space]")
        for key, value in point.items():
            _check_value(settings, key, value, f"{at} {key}")
            if not _in_distribution(value, *next(iter(space[key].items()))):
                raise ConfigError(f"{at} {key}: {value!r} is outside its search space {space[key]}")


def _check_distribution(kind: str, args: Any, at: str) -> None:
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{at}: {kind} needs a non-empty list")
    if kind == "choice":
        return
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{at}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{at}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{at}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{at}: randint needs whole numbers, got {args!r}")


def _check_value(settings: RunSettings, key: str, value: Any, at: str) -> None:
    try:
        settings.with_hyperparameters({key: value})
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{at}: value {value!r} is not allowed: {error}") from None


def _in_distribution(value: Any, kind: str, args: list) -> bool:
    if kind == "choice":
        return value in args
    return args[0] <= value <= args[1]
