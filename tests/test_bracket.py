"""normexp.bracket: the search strategy, as pure functions of finished trials."""

import math

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from normexp import bracket
from normexp.study import UNSTABLE
from tests.conftest import compose_search


def trial(lr: float, stable: bool, phase: str = "grid"):
    return create_trial(params={"lr": lr}, distributions={"lr": FloatDistribution(1e-4, 10, log=True)},
                        value=math.log10(lr) if stable else UNSTABLE,
                        user_attrs={"stable": stable, "phase": phase})


def test_plan_walks_down_the_grid_then_bisects_in_log_space():
    cfg = compose_search("search.lr_min=1e-4", "search.lr_max=10", "search.resolution=1.25", "search.refine_trials=1")
    assert bracket.coarse_grid(cfg.search) == pytest.approx([10, 1, 0.1, 0.01, 1e-3, 1e-4])
    assert bracket.plan(cfg, []) == ("grid", 10)
    assert bracket.plan(cfg, [trial(10, False)]) == ("grid", pytest.approx(1))
    phase, lr = bracket.plan(cfg, [trial(10, False), trial(1, False), trial(0.1, True)])
    assert phase == "bisect" and lr == pytest.approx(math.sqrt(0.1))
    assert bracket.plan(cfg, [trial(0.1, True)]) == ("grid", pytest.approx(1))  # only stable so far: go up
    assert bracket.plan(cfg, [trial(0.1, True), trial(0.12, False)]) == ("refine", None)
    assert bracket.plan(cfg, [trial(0.1, True), trial(0.12, False), trial(0.11, True, "refine")]) == (None, None)
    assert bracket.plan(cfg, [trial(lr, False) for lr in bracket.coarse_grid(cfg.search)]) == ("refine", None)


def test_bracket_flags_unstable_rates_below_a_stable_one():
    b = bracket.bracket([(0.001, False), (0.01, True), (0.03, False), (0.1, True), (0.3, False), (1.0, False)])
    assert (b.max_stable_lr, b.min_unstable_lr, b.non_monotone_lrs) == (0.1, 0.3, [0.001, 0.03])
    assert bracket.bracket([(1.0, False)]) == bracket.Bracket(None, None, [])
