"""normexp.stable_lr.bracket: the search strategy, as pure functions of finished trials."""

import math

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from normexp.stable_lr import bracket
from normexp.stable_lr.study import UNSTABLE
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


def test_workers_split_the_bracket_into_equal_log_parts_and_never_share_a_rate():
    cfg = compose_search("search.lr_min=1e-4", "search.lr_max=10", "search.resolution=1.25")
    decided = [trial(10, False), trial(1, False), trial(0.1, True)]
    # Two workers: the bracket (0.1, 1) in three parts, one cut each; a third asks while both run: wait.
    first = bracket.plan(cfg, decided, workers=2)
    assert first == ("bisect", pytest.approx(0.1 * 10 ** (1 / 3)))
    second = bracket.plan(cfg, decided, running=[(first[1], "bisect")], workers=2)
    assert second == ("bisect", pytest.approx(0.1 * 10 ** (2 / 3)))
    # A worker from another machine joins: a third rate, in the widest gap between the running ones.
    third = bracket.plan(cfg, decided, running=[(first[1], "bisect"), (second[1], "bisect")], workers=2)
    assert third == ("bisect", pytest.approx(math.sqrt(0.1)))
    # Grid: each worker walks down to the next rate not tried and not running.
    assert bracket.plan(cfg, [], running=[(10, "grid")], workers=2) == ("grid", pytest.approx(1))


def test_workers_never_cut_the_bracket_finer_than_the_resolution():
    cfg = compose_search("search.resolution=1.25")
    decided = [trial(0.1, True), trial(0.15, False)]  # a factor 1.5: one midpoint is enough
    assert bracket.split(0.1, 0.15, [], 4, 1.25) == pytest.approx(math.sqrt(0.1 * 0.15))
    assert bracket.plan(cfg, decided, running=[(math.sqrt(0.015), "bisect")], workers=4) == (None, None)
    assert bracket.plan(cfg, decided + [trial(math.sqrt(0.015), True)], workers=4) == (None, None)  # bracketed
