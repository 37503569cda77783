"""The experiment's `[search.space]` as Ray Tune domains, which `OptunaSearch` turns into Optuna's.

Each hyperparameter names one distribution:
`choice = [...]`, `uniform = [low, high]`, `loguniform = [low, high]`, `randint = [low, high]`
(both ends included).
"""

from __future__ import annotations

from typing import Any

from ray import tune


def to_tune_domain(kind: str, args: list) -> Any:
    if kind == "choice":
        return tune.choice(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is exclusive
    raise ValueError(f"unknown distribution {kind!r}")


def param_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """`{"learning_rate": {"loguniform": [1e-4, 0.1]}}` → `{"learning_rate": tune.loguniform(1e-4, 0.1)}`."""
    return {key: to_tune_domain(*next(iter(spec.items()))) for key, spec in space.items()}
