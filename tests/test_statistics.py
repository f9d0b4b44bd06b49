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
# -- AUROC intervals and tests -------------------------------------------------------------------------
import numpy as np

from structcore.evaluation.statistics import (
    GAIN, LOSS, NO_DIFFERENCE, bootstrap_auroc, bootstrap_aurocs, delong_covariance, delong_test,
    paired_bootstrap_test, seed_summary, significance, stratified_draws,
)
from structcore.metrics import auroc


def _heaviside(a, b):
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _brute_delong(labels, scores):
    """AUROCs and DeLong covariance from the O(n^2) definition of the placement values."""
    labels = np.asarray(labels)
    pos = [np.asarray(s)[labels == 1] for s in scores]
    neg = [np.asarray(s)[labels == 0] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10 = np.array([[np.mean([_heaviside(x, y) for y in q]) for x in p] for p, q in zip(pos, neg)])
    v01 = np.array([[np.mean([_heaviside(x, y) for x in p]) for y in q] for p, q in zip(pos, neg)])
    k = len(scores)
    s10 = np.array([[np.sum((v10[r] - v10[r].mean()) * (v10[s] - v10[s].mean())) / (m - 1) for s in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - v01[r].mean()) * (v01[s] - v01[s].mean())) / (n - 1) for s in range(k)] for r in range(k)])
    return v10.mean(axis=1), s10 / m + s01 / n


def _case(seed, n_good, n_bad, shift_a, shift_b, rho=0.6, ties=False):
    """Two correlated normal scores of the same images; rounded for ties."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_good, int), np.ones(n_bad, int)]
    common = rng.normal(size=len(labels))
    a = rho * common + np.sqrt(1 - rho * rho) * rng.normal(size=len(labels)) + shift_a * labels
    b = rho * common + np.sqrt(1 - rho * rho) * rng.normal(size=len(labels)) + shift_b * labels
    if ties:
        a, b = np.round(a, 0), np.round(b, 0)
    order = rng.permutation(len(labels))
    return labels[order], a[order], b[order]


def test_delong_by_hand():
    """Three defective (0.9, 0.8, 0.4) and two good (0.5, 0.1) images, worked out by hand: the placement
    values are V10 = (1, 1, 0.5), V01 = (2/3, 1); AUROC 5/6, S10 = 1/12, S01 = 1/18, var = 1/36 + 1/36."""
    labels = [1, 1, 1, 0, 0]
    a = [0.9, 0.8, 0.4, 0.5, 0.1]
    aucs, cov = delong_covariance(labels, [a])
    assert np.isclose(aucs[0], 5 / 6)
    assert np.isclose(cov[0, 0], 1 / 12 / 3 + 1 / 18 / 2)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_delong_matches_mann_whitney_and_the_quadratic_placement_values(seed, ties):
    labels, a, b = _case(seed, 9, 13, 1.0, 1.5, ties=ties)
    aucs, cov = delong_covariance(labels, [a, b])
    ref_aucs, ref_cov = _brute_delong(labels, [a, b])
    assert np.allclose(aucs, [auroc(labels, a), auroc(labels, b)], atol=1e-12)
    assert np.allclose(aucs, ref_aucs, atol=1e-12)
    assert np.allclose(cov, ref_cov, atol=1e-14)
    r = delong_test(labels, a, b)
    z = (ref_aucs[1] - ref_aucs[0]) / np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert np.isclose(r.z, z) and np.isclose(r.p, 2 * norm.sf(abs(z)))


def test_delong_of_a_score_against_itself_and_of_two_perfect_scores():
    labels, a, _ = _case(3, 10, 10, 1.0, 1.0)
    assert delong_test(labels, a, a).p == 1.0
    perfect = labels + 0.1 * np.arange(len(labels)) / len(labels)
    r = delong_test(labels, perfect, perfect * 2)
    assert r.auroc_a == r.auroc_b == 1.0 and r.p == 1.0


@pytest.mark.parametrize("shift_b", [0.4, 0.9])
def test_delong_p_agrees_with_the_paired_bootstrap(shift_b):
    labels, a, b = _case(4, 120, 150, 0.5, shift_b)
    d = delong_test(labels, a, b)
    boot = paired_bootstrap_test(labels, a, b, n_resamples=4000, seed=7)
    assert np.isclose(boot.difference, d.difference, atol=1e-12)
    se_delong = np.sqrt(d.var_a + d.var_b - 2 * d.cov)
    assert abs(boot.se / se_delong - 1) < 0.1  # both estimate the same standard error
    assert abs(np.log10(boot.p) - np.log10(d.p)) < 0.5 or max(boot.p, d.p) < 1e-4


def test_bootstrap_equals_a_direct_resampling_loop():
    labels, a, b = _case(5, 11, 17, 1.0, 1.0, ties=True)
    n = 300
    got = bootstrap_aurocs(labels, [a, b], n_resamples=n, seed=11)
    pos_idx, neg_idx = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    pos_draws, neg_draws = stratified_draws(len(pos_idx), len(neg_idx), n, np.random.default_rng(11))
    for i in range(n):
        rows = np.r_[pos_idx[pos_draws[i]], neg_idx[neg_draws[i]]]
        assert np.isclose(got[0, i], auroc(labels[rows], a[rows]), atol=1e-12)
        assert np.isclose(got[1, i], auroc(labels[rows], b[rows]), atol=1e-12)
    low, high = bootstrap_auroc(labels, a, n_resamples=n, seed=11)
    assert (low, high) == tuple(np.quantile(got[0], [0.025, 0.975]))
    assert low <= auroc(labels, a) <= high


def test_bootstrap_draws_keep_the_class_sizes_and_are_seeded():
    pos, neg = stratified_draws(5, 3, 50, np.random.default_rng(0))
    assert pos.shape == (50, 5) and neg.shape == (50, 3) and pos.max() < 5 and neg.max() < 3
    labels, a, _ = _case(6, 8, 8, 1.0, 1.0)
    assert np.array_equal(bootstrap_aurocs(labels, [a], 100, seed=3), bootstrap_aurocs(labels, [a], 100, seed=3))
    assert not np.array_equal(bootstrap_aurocs(labels, [a], 100, seed=3), bootstrap_aurocs(labels, [a], 100, seed=4))


def test_bootstrap_rejects_one_class():
    with pytest.raises(ValueError, match="good and defective"):
        bootstrap_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        delong_test([0, 1, 1], [0.1, np.nan, 0.3], [0.1, 0.2, 0.3])


def test_significance_classes_on_constructed_cases():
    labels, a, b = _case(8, 150, 150, 0.2, 1.5)  # b clearly better
    d = delong_test(labels, a, b)
    assert significance(d.difference, d.p) == GAIN
    d = delong_test(labels, b, a)
    assert significance(d.difference, d.p) == LOSS
    labels, a, b = _case(9, 20, 20, 1.0, 1.0, rho=0.99)  # the same score up to small noise
    d = delong_test(labels, a, b)
    assert d.p > 0.05 and significance(d.difference, d.p) == NO_DIFFERENCE
    assert significance(0.01, 0.049) == GAIN and significance(0.01, 0.05) == NO_DIFFERENCE


def test_seed_summary_is_the_t_interval_of_the_mean():
    vals = [0.90, 0.92, 0.95, 0.91, None]
    s = seed_summary(vals)
    x = np.array(vals[:4])
    half = 3.182446305284263 * x.std(ddof=1) / 2  # t(0.975, 3), from a table
    assert s["n"] == 4 and np.isclose(s["mean"], x.mean()) and np.isclose(s["std"], x.std(ddof=1))
    assert np.allclose(s["ci95"], [x.mean() - half, x.mean() + half])
    assert seed_summary([0.5])["std"] is None and seed_summary([None]) is None
