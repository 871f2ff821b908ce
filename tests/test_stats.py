"""normexp.analysis.stats: statistics over seeds and how a cell shows them."""

import math

import pytest

from normexp.analysis.stats import describe, interval, numbers, paired_cell, shown


def test_statistics_over_seeds_skip_missing_values():
    assert describe([0.9, 0.8, None, math.nan]) == (pytest.approx(0.85), pytest.approx(math.sqrt(0.005)), 2)
    assert shown([0.5]) == "0.500" and shown([]) == "—" and shown([1.0, 2.0], ".1f") == "1.5 ± 0.7"
    assert numbers("acc", [1.0, 3.0]) == {"acc_mean": 2.0, "acc_std": math.sqrt(2)}


def test_interval_is_student_t_and_needs_two_values():
    mean, half, n = interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert math.isnan(interval([1.0])[1])


def test_paired_cell_marks_an_interval_that_contains_no_difference():
    assert paired_cell([0.01, 0.02, 0.015], 0) == "+0.015 ± 0.005 (n=3, 95% CI +0.003..+0.027)"
    assert paired_cell([0.01, -0.02, 0.015], 0).endswith(", no clear difference")
    assert paired_cell([0.02], 0) == "+0.020 (one seed: no interval)"
