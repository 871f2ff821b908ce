"""normexp.analysis.claims and stats.ratio_interval: the four verdict kinds on hand-made per-seed values,
the log-ratio interval of a speedup, and the seeds an undecided claim would need."""

import math
import statistics

import pytest
from scipy.stats import t as student_t

from normexp.analysis.claims import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NO_DIFFERENCE, Claim, judge,
                                     seeds_to_decide)
from normexp.analysis.stats import ratio_interval

SPEEDUP = Claim("speedup", "faster", 1.1, ratio=True, size=(2, 10))
ACCURACY = Claim("accuracy, bn - none", "higher accuracy", 0.005)


def test_a_speedup_interval_is_the_t_interval_of_the_log_ratios_back_on_the_ratio_scale():
    ratios = [1.5, 3.0, 2.0, 2.5, 1.8]
    mean, low, high, n = ratio_interval(ratios)
    logs = [math.log(r) for r in ratios]
    half = student_t.ppf(0.975, 4) * statistics.stdev(logs) / math.sqrt(5)
    assert n == 5 and mean == pytest.approx(statistics.geometric_mean(ratios))
    assert (low, high) == (pytest.approx(math.exp(statistics.fmean(logs) - half)), pytest.approx(math.exp(statistics.fmean(logs) + half)))
    assert low * high == pytest.approx(mean ** 2)  # symmetric in logs: 3/6 and 6/3 weigh alike
    assert ratio_interval([2.0])[1:3] != ratio_interval([2.0])[1:3]  # NaN: one seed gives no interval


def test_a_speedup_clear_of_one_holds_and_says_which_part_of_the_range_is_shown():
    verdict = judge(SPEEDUP, [1.5, 1.6, 1.4, 1.55, 1.5])
    assert verdict.kind == HOLDS and verdict.words == "holds (faster: yes; 2-10x: no)"
    assert judge(SPEEDUP, [3.0, 4.0, 3.5, 5.0, 4.2]).words == "holds (faster: yes; 2-10x: yes)"
    assert judge(SPEEDUP, [1.3, 4.0, 2.5, 5.0, 1.9]).words == "holds (faster: yes; 2-10x: not shown)"
    assert judge(SPEEDUP, [1.5, 1.6, 1.4, 1.55, 1.5]).effect().startswith("speedup 1.51x, 95% CI 1.42..")


def test_an_interval_within_the_margin_is_no_difference_beyond_it_even_when_clear_of_zero():
    verdict = judge(ACCURACY, [0.001, 0.002, 0.0015, 0.001, 0.002])
    assert verdict.kind == NO_DIFFERENCE and verdict.words == "no difference beyond ±0.005"
    assert judge(SPEEDUP, [1.0, 1.02, 0.99, 1.01, 1.0]).words == "no difference beyond 1.1x either way"


def test_an_interval_that_excludes_the_claimed_effect_does_not_hold_on_this_setup():
    verdict = judge(ACCURACY, [-0.03, -0.02, -0.025, -0.035, -0.02])
    assert verdict.kind == DOES_NOT_HOLD and verdict.words == "does not hold on this setup (not higher accuracy)"
    # a claim of a smaller value (sign -1): a clearly larger one does not hold it
    assert judge(Claim("gap change", "smaller gap", 0.01, sign=-1), [0.05, 0.06, 0.04]).kind == DOES_NOT_HOLD


def test_an_undecided_claim_is_inconclusive_with_the_seeds_that_would_decide_at_its_spread():
    values = [0.02, -0.01, 0.03, 0.0, 0.015]
    verdict = judge(ACCURACY, values)
    mean, std = statistics.fmean(values), statistics.stdev(values)
    needed = verdict.seeds_needed
    assert verdict.kind == INCONCLUSIVE and verdict.words == f"inconclusive at 5 seeds (about {needed} would decide)"
    # the estimate is the fewest seeds whose interval, at this mean and spread, would be clear of zero
    def half(n):
        return student_t.ppf(0.975, n - 1) * std / math.sqrt(n)
    assert half(needed) < mean <= half(needed - 1) and needed > 5
    assert seeds_to_decide(mean, std, 0.005) == needed
    assert judge(ACCURACY, [0.01]).words == "inconclusive at 1 seed (no interval)" and judge(ACCURACY, [0.01]).seeds_needed is None
    assert seeds_to_decide(0.0, 1.0, 0.0) is None  # no effect and no margin: no number of seeds decides
