"""`search.algorithm`: what "auto" picks, and the Optuna sampler behind each name."""

from __future__ import annotations

import optuna
import pytest

from carclf.config import ConfigError
from tuning import samplers
from tuning.samplers import AUTO_TPE_FROM, choose_sampler, make_sampler


def test_auto_picks_gp_for_small_searches_and_tpe_for_large_ones(monkeypatch):
    monkeypatch.setattr(samplers, "gp_available", lambda: True)
    assert choose_sampler("auto", 8)[0] == "gp"
    assert choose_sampler("auto", AUTO_TPE_FROM - 1)[0] == "gp"
    assert choose_sampler("auto", AUTO_TPE_FROM) == ("tpe", f"auto: {AUTO_TPE_FROM} trials >= {AUTO_TPE_FROM}")
    assert choose_sampler("random", 8) == ("random", "as set in search.algorithm")


def test_auto_without_pytorch_says_why_it_uses_tpe_and_gp_is_refused(monkeypatch):
    monkeypatch.setattr(samplers, "gp_available", lambda: False)
    name, why = choose_sampler("auto", 8)
    assert name == "tpe" and "needs PyTorch" in why
    with pytest.raises(ConfigError, match=r"search\.algorithm 'gp' needs PyTorch"):
        choose_sampler("gp", 8)


@pytest.mark.parametrize("name, kind", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                        pytest.param("gp", optuna.samplers.GPSampler, marks=pytest.mark.gp)])
def test_each_name_is_its_optuna_sampler(name, kind):
    if name == "gp" and not samplers.gp_available():
        pytest.skip("Optuna's GPSampler needs PyTorch: pip install -e \".[gp]\" (CI installs it)")
    sampler = make_sampler(name, startup_trials=3, parallel=True, seed=1)
    assert isinstance(sampler, kind)
    if name != "random":  # the search's 3 random start-up trials, then the model: not Optuna's default count
        ours, random_only = proposals(sampler, 4), proposals(make_sampler(name, startup_trials=100, parallel=True, seed=1), 4)
        assert ours[:3] == random_only[:3] and ours[3] != random_only[3]


def proposals(sampler: optuna.samplers.BaseSampler, count: int) -> list[float]:
    """The points `sampler` proposes, one after another, on (x - 0.3)^2 over [0, 1]."""
    study = optuna.create_study(sampler=sampler)
    points = []
    for _ in range(count):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        study.tell(trial, (trial.params["x"] - 0.3) ** 2)
        points.append(trial.params["x"])
    return points
