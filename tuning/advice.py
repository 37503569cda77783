"""What to change for the next run, read from a finished search's numbers: each piece of advice names one
experiment key and says why, from this run's own figures.

A budget buys trials; a run should say how to spend the next one. Five situations are recognised:
- the winner was still improving at its last epoch (`scheduler.max_epochs`);
- the winner sits at the edge of a searched range that could be wider (`search.space.<key>`);
- the best trials are within noise of each other, and how many validation images would tell the best
  two apart (`data.validation_fraction`);
- the transfer probe found the pretrained features no better than random ones (`model.weights`);
- the search found nothing better than its starting configuration (`search.start`).
Each is said only when this run's numbers call for it (`report.json`'s `advice`, the report's first
screen and the console).
"""

from __future__ import annotations

import math
from typing import Any

from carclf.config import ConfigError
from carclf.evaluate import NOISE_Z
from tuning.experiment import Experiment
from tuning.search_space import Dimension
from tuning.trials import Selection

EDGE = 0.05  # a float within this share of its range from an end (in log space for loguniform) is at the edge


def advise(numbers: dict[str, Any], experiment: Experiment) -> list[dict[str, str]]:
    """The advice for a run whose report numbers are `numbers`: [{key, advice}], in the order of the module docstring."""
    top = numbers["top_trials"]
    objective = Selection(numbers["search"]["metric"], numbers["search"]["mode"]).objective
    scored = [row for row in top if isinstance(row.get(objective), (int, float)) and math.isfinite(row[objective])]
    advice = []
    if scored:
        advice += still_improving(scored, experiment.scheduler.max_epochs)
        advice += at_the_edge(scored[0], experiment)
        advice += too_close_to_tell(scored, numbers, objective)
    transfer = numbers.get("transfer")
    if transfer and transfer["verdict"] == "not better":
        advice.append({"key": "model.weights", "advice": (
            f"the pretrained backbone's frozen features scored no better than random weights' on this data "
            f"({transfer['pretrained_accuracy']:.3f} against {transfer['random_accuracy']:.3f}): head-only and shallow trials gain "
            "nothing from it; use weights pretrained nearer this data ('imagenet' for photos), or search deeper unfreeze_depth")})
    start = numbers.get("against_start")
    if start and start["within_noise"]:
        advice.append({"key": "search.start", "advice": (
            "the search found nothing better than the starting configuration within noise: keep the start, or widen the space "
            "or validate on more images before buying more trials")})
    return advice


def still_improving(scored: list[dict[str, Any]], max_epochs: int) -> list[dict[str, str]]:
    """The winner reached its best score at its last epoch, the last the scheduler allows."""
    winner = scored[0]
    if winner.get("epochs") != max_epochs or winner.get("best_epoch") != max_epochs:
        return []
    rising = sum(row.get("epochs") == max_epochs and row.get("best_epoch") == max_epochs for row in scored)
    return [{"key": "scheduler.max_epochs", "advice": (
        f"{rising} of the {len(scored)} top trials, the winner among them, scored their best at their last epoch, {max_epochs}: "
        f"they were still improving; raise scheduler.max_epochs (for example to {2 * max_epochs})")}]


def at_the_edge(winner: dict[str, Any], experiment: Experiment) -> list[dict[str, str]]:
    """Each searched range whose end the winner sits at, where a wider range is allowed."""
    settings, advice = experiment.trial_settings(), []
    for dimension in experiment.search.space.dimensions:
        value = winner.get(dimension.name)
        if dimension.kind == "choice" or (dimension.kind == "randint" and dimension.size < 3) or value is None:
            continue
        for end, beyond in edges(dimension, value):
            try:
                settings.with_hyperparameters({dimension.name: beyond})
            except (ConfigError, TypeError):
                continue  # the range already ends where the setting does (unfreeze_depth 0, say)
            side = "bottom" if end == dimension.args[0] else "top"
            advice.append({"key": f"search.space.{dimension.name}", "advice": (
                f"the winner's {dimension.name} = {value:.4g} sits at the {side} of the searched range {dimension.to_dict()}: "
                f"the best value may lie beyond it; widen the range past {end:.4g} (for example to {beyond:.4g})")})
    return advice


def edges(dimension: Dimension, value: float) -> list[tuple[float, float]]:
    """The ends of `dimension`'s range that `value` sits at, each with a value one step beyond it."""
    low, high = dimension.args
    if dimension.kind == "randint":
        return [(end, beyond) for end, beyond in ((low, low - 1), (high, high + 1)) if value == end]
    scale = math.log if dimension.kind == "loguniform" else float
    position = (scale(value) - scale(low)) / (scale(high) - scale(low))
    if dimension.kind == "loguniform":
        steps = (low / 2, high * 2)
    else:
        steps = (low - (high - low) / 4, high + (high - low) / 4)
    return [(end, beyond) for end, beyond, near in ((low, steps[0], position <= EDGE), (high, steps[1], position >= 1 - EDGE)) if near]


def too_close_to_tell(scored: list[dict[str, Any]], numbers: dict[str, Any], objective: str) -> list[dict[str, str]]:
    """The best trial's closest rival is within noise: how many validation images would tell them apart."""
    close = [row for row in scored[1:] if row["trial_id"] in numbers["within_noise"]]
    if not close:
        return []
    best, rival, size = scored[0], close[0], numbers["search"]["validation_size"]
    difference = abs(best[objective] - rival[objective])
    others = f"{len(close)} other trial(s) are" if len(close) > 1 else f"trial {rival['trial_id']} is"
    if difference == 0:
        need = "no number of images tells a tie apart"
    else:
        variance = sum(p * (1 - p) for p in (best[objective], rival[objective]))
        need = f"telling the best from trial {rival['trial_id']} ({difference:.3f} apart) takes about " \
               f"{math.ceil(NOISE_Z ** 2 * variance / difference ** 2)} validation images"
    return [{"key": "data.validation_fraction", "advice": (
        f"{others} within noise of the best on {size} validation images: {need}; raise data.validation_fraction or add images")}]
