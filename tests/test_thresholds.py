import numpy as np
import pytest

from structcore.errors import ConfigError
from structcore.thresholds import Thresholds, conformal_rank, threshold_at


def _brute_force_rank(n, rate):
    """Smallest k whose exact exceedance chance (n + 1 - k) / (n + 1) for a new exchangeable score is <= rate."""
    return next((k for k in range(1, n + 1) if (n + 1 - k) / (n + 1) <= rate + 1e-12), n)


@pytest.mark.parametrize("n", [1, 8, 20, 98, 99, 100, 209, 320, 1000])
@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05, 0.1, 0.5])
def test_rank_is_the_smallest_with_the_promised_exceedance(n, rate):
    assert conformal_rank(n, rate) == _brute_force_rank(n, rate)


def test_threshold_is_that_order_statistic():
    rng = np.random.default_rng(0)
    scores = rng.random(209)
    assert threshold_at(scores, 0.01) == np.sort(scores)[207]  # ceil(210 * 0.99) = 208th smallest
    assert threshold_at(scores, 0.5) == np.sort(scores)[104]  # ceil(105) = 105th


def test_new_good_scores_exceed_the_threshold_at_most_at_the_rate():
    """Simulated exchangeable calibration and test scores: the realised false-reject rate averages at most
    the rate (and not far below: the order statistic is the smallest that keeps the promise)."""
    rng = np.random.default_rng(1)
    n, rate, trials = 150, 0.05, 4000
    calib = rng.lognormal(size=(trials, n))
    new = rng.lognormal(size=trials)
    t = np.array([threshold_at(c, rate) for c in calib])
    realised = float(np.mean(new > t))
    k = conformal_rank(n, rate)
    exact = (n + 1 - k) / (n + 1)
    assert exact <= rate
    assert abs(realised - exact) < 4 * np.sqrt(exact * (1 - exact) / trials)


def test_normalised_score_is_0_at_the_median_and_1_at_the_threshold():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    t = Thresholds.from_scores("leave-one-out", {"hybrid": scores}, 0.2)
    assert t.values["hybrid"] == 10.0  # ceil(6 * 0.8) = 5th smallest
    assert t.normalise("hybrid", 3.0) == 0.0
    assert t.normalise("hybrid", 10.0) == 1.0
    assert t.normalise("hybrid", 17.0) == 2.0
    flat = Thresholds.from_scores("in-sample", {"hybrid": np.full(5, 2.0)}, 0.2)
    assert flat.normalise("hybrid", 2.0) == 1.0 and flat.normalise("hybrid", 1.0) == 0.5


def test_rate_and_value_edits():
    rng = np.random.default_rng(2)
    t = Thresholds.from_scores("k-fold", {"base": rng.random(300), "pixel": rng.random(300)}, 0.01)
    loose = t.at_rate(0.1)
    assert loose.values["base"] < t.values["base"] and loose.rejected_share("base") <= 0.1
    assert loose.false_reject_rate == 0.1 and set(loose.set_by.values()) == {"rate"}
    fixed = loose.with_value("base", 0.5)
    assert fixed.values["base"] == 0.5 and fixed.set_by == {"base": "value", "pixel": "rate"}
    assert fixed.values["pixel"] == loose.values["pixel"] and t.values["base"] != 0.5  # edits copy
    assert fixed.record()["set_by"]["base"] == "value" and fixed.record()["images"] == 300
    for bad in (0, 1, -0.1, "0.1", True):
        with pytest.raises(ConfigError, match="false-reject rate"):
            t.at_rate(bad)
    with pytest.raises(ConfigError, match="no threshold named"):
        t.with_value("hybrid", 1.0)
    with pytest.raises(ConfigError, match="finite"):
        t.with_value("base", float("nan"))


def test_too_few_images_warn_and_use_the_largest_score():
    t = Thresholds.from_scores("leave-one-out", {"base": np.arange(10.0)}, 0.01)
    assert t.values["base"] == 9.0
    (warning,) = t.warnings()
    assert "10 calibration images" in warning and "at least 99" in warning and "0.0909" in warning
    assert Thresholds.from_scores("leave-one-out", {"base": np.arange(99.0)}, 0.01).warnings() == []
