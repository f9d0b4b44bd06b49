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


def test_pixel_decisions_count_pixels_above_the_threshold():
    import numpy as np

    from structcore.evaluation.decisions import decision_counts, pixel_decisions

    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    masks = rng.random((3, 8, 8)) > 0.7
    got = pixel_decisions(masks, maps, 0.6)
    above = maps > 0.6
    tp, fp, fn = (above & masks).sum(), (above & ~masks).sum(), (~above & masks).sum()
    assert got["precision"] == tp / (tp + fp) and got["recall"] == tp / (tp + fn)
    assert got["f1"] == pytest.approx(2 * got["precision"] * got["recall"] / (got["precision"] + got["recall"]))
    labels = np.array([0, 0, 1, 1, 1])
    scores = {s: np.array([0.1, 0.9, 0.2, 0.8, 0.95]) for s in ("base", "struct", "hybrid")}
    d = decision_counts(labels, scores, dict.fromkeys(scores, 0.5))["hybrid"]
    assert (d["good_rejected"]["count"], d["good_rejected"]["n"]) == (1, 2)
    assert (d["defective_accepted"]["count"], d["defective_accepted"]["n"]) == (1, 3)
    assert d["good_rejected"]["ci95"] == list(wilson_interval(1, 2))
