import math

import pytest
from scipy.stats import norm

from structcore.evaluation.statistics import wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (3, 584), (584, 584), (17, 100)])
def test_wilson_bounds_are_where_the_score_test_is_exactly_rejected(k, n):
    """Each Wilson bound p0 solves |k/n - p0| = z sqrt(p0 (1 - p0) / n) (or is 0 / 1 at the edges)."""
    z = norm.ppf(0.975)
    low, high = wilson_interval(k, n)
    p = k / n
    for p0 in (low, high):
        if 0 < p0 < 1:
            assert abs(abs(p - p0) - z * math.sqrt(p0 * (1 - p0) / n)) < 1e-12
    assert low <= p <= high
    assert (low == 0) == (k == 0) and (high == 1) == (k == n)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
