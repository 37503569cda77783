"""The experiment's `[search.space]`, parsed and checked once into a `SearchSpace` of `Dimension`s.

Each hyperparameter names one distribution: `choice = [...]`, `uniform = [low, high]`,
`loguniform = [low, high]` or `randint = [low, high]` (both ends included). A `Dimension` gives
its Optuna distribution, the one form the searcher asks the study with (`tuning.searcher`) and the
report's importance study reads, and says when two values are the same point for the search
(`Dimension.same`: a repeat, which the searcher never proposes). `SearchSpace.to_dict()` gives back the TOML table, which
`experiment.json` stores and `--resume` reads back. Optuna is imported only when a distribution is
asked for: the search's `--help` answers before it loads, and it reads the experiment first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from carclf.config import TUNABLE_KEYS, ConfigError, RunSettings

KINDS = ("choice", "uniform", "loguniform", "randint")
# Two values of a float range closer than this share of the range (in log space for loguniform) are one
# point: trials there differ by less than their seed's noise, so a second trial would measure nothing new.
REPEAT_TOLERANCE = 0.01
# Why some [train] keys cannot be searched over: they describe the whole search, not one trial.
NOT_TUNABLE = {
    "epochs": "trials train up to scheduler.max_epochs and the winner is retrained for its best epoch",
    "seed": "one seed for the whole search keeps trials comparable; set train.seed",
    "epoch_images": "equal epochs are what make ASHA's rungs fair",
    "feature_views": "the cached features are built once, before the trials",
    "precision": "set train.precision for the whole search",
}


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter's distribution: `kind` in `KINDS`; `args` the choices, or (low, high)."""

    name: str
    kind: str
    args: tuple

    def values(self) -> list:
        """The values a trial may take: the choices, a randint's whole range; a float range as its two ends."""
        if self.kind == "randint":
            return list(range(self.args[0], self.args[1] + 1))
        return list(self.args)

    def contains(self, value: Any) -> bool:
        """Whether `value` is one the distribution can propose (a range's ends included)."""
        if self.kind == "choice":
            return value in self.args
        return self.args[0] <= value <= self.args[1]

    def same(self, a: Any, b: Any) -> bool:
        """Whether `a` and `b` are one point of this dimension: equal choices and integers, floats within
        `REPEAT_TOLERANCE` of the range (measured in log space for loguniform)."""
        if self.kind in ("choice", "randint"):
            return a == b
        scale = math.log if self.kind == "loguniform" else float
        low, high = (scale(v) for v in self.args)
        return abs(scale(a) - scale(b)) <= REPEAT_TOLERANCE * (high - low)

    @property
    def size(self) -> int | None:
        """How many distinct points it has: the choices, a randint's range; None for a float range."""
        return len(self.values()) if self.kind in ("choice", "randint") else None

    @property
    def is_fixed(self) -> bool:
        """A choice of one value: nothing to search."""
        return self.kind == "choice" and len(self.args) == 1

    def optuna_distribution(self) -> Any:
        """The Optuna distribution, e.g. `FloatDistribution(1e-4, 0.1, log=True)`."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.args)
        low, high = self.args
        if self.kind == "randint":
            return IntDistribution(low, high)
        return FloatDistribution(low, high, log=self.kind == "loguniform")

    def to_dict(self) -> dict[str, list]:
        """As the file writes it: `{"loguniform": [1e-4, 0.1]}`."""
        return {self.kind: list(self.args)}


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters a search chooses, in the file's order; iterating gives their names."""

    dimensions: tuple[Dimension, ...] = ()

    def __iter__(self) -> Iterator[str]:
        return (dimension.name for dimension in self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def get(self, name: str) -> Dimension | None:
        """The dimension of hyperparameter `name`, or None where the search does not tune it."""
        return next((dimension for dimension in self.dimensions if dimension.name == name), None)

    @property
    def is_single_point(self) -> bool:
        """True when every hyperparameter has a single value: the search has nothing to choose."""
        return all(dimension.is_fixed for dimension in self.dimensions)

    @property
    def size(self) -> int | None:
        """How many distinct trials the space holds, or None when a float range makes it unbounded."""
        sizes = [dimension.size for dimension in self.dimensions]
        return None if None in sizes else math.prod(sizes)

    def repeats(self, point: dict[str, Any], other: dict[str, Any]) -> bool:
        """Whether two trials' hyperparameters are one point (`Dimension.same` in every dimension)."""
        return all(dimension.same(point[dimension.name], other[dimension.name]) for dimension in self.dimensions)

    def optuna_distributions(self) -> dict[str, Any]:
        """Each hyperparameter's Optuna distribution, by name: what the searcher asks the study for."""
        return {dimension.name: dimension.optuna_distribution() for dimension in self.dimensions}

    def to_dict(self) -> dict[str, dict[str, list]]:
        """The `[search.space]` table, as `parse_space` reads it back."""
        return {dimension.name: dimension.to_dict() for dimension in self.dimensions}

    def __str__(self) -> str:
        """The table as the file wrote it (the plan prints it so)."""
        return str(self.to_dict())


def parse_space(table: Any, settings: RunSettings, where: str) -> SearchSpace:
    """`[search.space]` as a `SearchSpace`: every key tunable, every distribution well formed and fitting its
    hyperparameter's type (integers take `randint` or a `choice` of integers), and every value it names one
    that `settings` accept. Errors name `where` (the file) and the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} [search]: key 'space' must be dict, got {type(table).__name__} {table!r}")
    return SearchSpace(tuple(_parse_dimension(key, spec, settings, f"{where} [search.space] {key}") for key, spec in table.items()))


def check_start_points(space: SearchSpace, points: list, settings: RunSettings, num_samples: int, where: str) -> None:
    """Each `[[search.start]]` point gives every hyperparameter of the space one value it can propose, once; and
    every point is a trial, so there are no more of them than `num_samples`, nor more trials than a finite space holds."""
    for number, point in enumerate(points, start=1):
        at = f"{where} [[search.start]] #{number}"
        if not isinstance(point, dict):
            raise ConfigError(f"{at}: must be a table of hyperparameter values")
        extra = sorted(set(point) - set(space))
        if extra:
            raise ConfigError(f"{at}: key(s) {extra} are not in [search.space]")
        missing = sorted(set(space) - set(point))
        if missing:
            raise ConfigError(f"{at}: key(s) {missing} of [search.space] have no value")
        for key, value in point.items():
            _check_value(settings, key, value, f"{at} {key}")
            dimension = space.get(key)
            if not dimension.contains(value):
                raise ConfigError(f"{at} {key}: {value!r} is outside its search space {dimension.to_dict()}")
        earlier = next((n for n, other in enumerate(points[: number - 1], start=1) if other == point), None)
        if earlier is not None:
            raise ConfigError(f"{at}: repeats #{earlier}; a start point is one trial, and the same point twice would only "
                              "measure the seed's noise: drop the repeat")
    if len(points) > num_samples:
        raise ConfigError(f"{where} [search]: {len(points)} [[search.start]] points, but num_samples is {num_samples}; each "
                          "start point is a trial: raise num_samples or drop points")
    if space.size is not None and space.size < num_samples:
        raise ConfigError(f"{where} [search]: num_samples is {num_samples}, but [search.space] holds only {space.size} different "
                          f"trials and a search never repeats one: lower num_samples to {space.size} or widen the space")


def _parse_dimension(key: str, spec: Any, settings: RunSettings, at: str) -> Dimension:
    if key in NOT_TUNABLE:
        raise ConfigError(f"{at}: not tunable: {NOT_TUNABLE[key]}")
    if key not in TUNABLE_KEYS:
        raise ConfigError(f"{at}: not a tunable key; expected one of {sorted(TUNABLE_KEYS)}")
    kind, args = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
    if kind not in KINDS:
        raise ConfigError(f"{at}: must be one distribution, e.g. {{ loguniform = [1e-4, 1e-1] }}; one of {KINDS}")
    _check_distribution(kind, args, TUNABLE_KEYS[key], at)
    for value in args:
        _check_value(settings, key, value, at)
    return Dimension(key, kind, tuple(args))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_distribution(kind: str, args: Any, value_type: type, at: str) -> None:
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{at}: {kind} needs a non-empty list")
    if value_type is int and kind in ("uniform", "loguniform"):
        raise ConfigError(f"{at}: takes whole numbers: use randint = [low, high] or a choice of integers, not {kind}")
    if not all(_is_number(a) and math.isfinite(a) for a in args):
        raise ConfigError(f"{at}: {kind} needs finite numbers, got {args!r}")
    if kind == "choice":
        if value_type is int and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{at}: takes whole numbers: a choice of integers, got {args!r}")
        repeated = sorted({a for a in args if args.count(a) > 1})
        if repeated:
            raise ConfigError(f"{at}: choice lists {', '.join(map(repr, repeated))} more than once, which would draw it more often; "
                              "list each value once")
        return
    if len(args) != 2:
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
