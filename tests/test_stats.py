"""normexp.stats: statistics over seeds and how a cell shows them."""

import math

import pytest

from normexp.stats import describe, numbers, shown


def test_statistics_over_seeds_skip_missing_values():
    assert describe([0.9, 0.8, None, math.nan]) == (pytest.approx(0.85), pytest.approx(math.sqrt(0.005)), 2)
    assert shown([0.5]) == "0.500" and shown([]) == "—" and shown([1.0, 2.0], ".1f") == "1.5 ± 0.7"
    assert numbers("acc", [1.0, 3.0]) == {"acc_mean": 2.0, "acc_std": math.sqrt(2)}
