"""Uncertainty of the benchmark's numbers: intervals for rates and AUROCs, tests of one score against another.

* :func:`wilson_interval`: a binomial proportion (e.g. a rejection rate).
* :func:`bootstrap_auroc`: AUROC resampled with replacement within the good and within the defective
  images separately (stratified: every resample keeps the test set's class sizes), percentile interval.
* :func:`delong_test`: DeLong's test of two correlated AUROCs on the same images (DeLong, DeLong and
  Clarke-Pearson 1988), in the midrank form of Sun and Xu (2014): O(n log n), no pairwise matrix.
* :func:`paired_bootstrap_test`: the same question by resampling images, both scores together.
* :func:`seed_summary`: mean, standard deviation and t-interval of a metric over seeds.

AUROC here is the Mann-Whitney statistic with ties counted one half, the same value as
:func:`structcore.metrics.auroc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

#: Significance classes of one score against another (see :func:`significance`).
GAIN, NO_DIFFERENCE, LOSS = "gain", "none", "loss"
ALPHA = 0.05


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / trials`` (``(0, 1)`` for no trials)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == trials else centre + half
    return low, high


def _split(labels, scores: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each score array split into its defective (label 1) and good (label 0) images' values."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be a 1-D array of 0 (good) and 1 (defective)")
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        raise ValueError(f"an AUROC needs good and defective images, got {int(neg.sum())} good and "
                         f"{int(pos.sum())} defective")
    out_pos, out_neg = [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        if s.shape != labels.shape:
            raise ValueError(f"scores have shape {s.shape} for {labels.shape} labels")
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or infinite values")
        out_pos.append(s[pos])
        out_neg.append(s[neg])
    return out_pos, out_neg


# -- DeLong ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeLongResult:
    """Two AUROCs on the same images, their variances and covariance, and the two-sided test of equality."""

    auroc_a: float
    auroc_b: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p: float

    @property
    def difference(self) -> float:
        """``auroc_b - auroc_a``."""
        return self.auroc_b - self.auroc_a


def placement_values(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of one score: for each defective image the share of good images
    it outranks (ties one half), and for each good image the share of defective images that outrank it."""
    (pos,), (neg,) = _split(labels, [scores])
    m, n = len(pos), len(neg)
    both = rankdata(np.concatenate([pos, neg]))  # midranks among all images
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def delong_covariance(labels, scores: list) -> tuple[np.ndarray, np.ndarray]:
    """The AUROCs of several scores on the same images and DeLong's estimate of their covariance matrix."""
    parts = [placement_values(labels, s) for s in scores]
    v10 = np.stack([p[0] for p in parts])
    v01 = np.stack([p[1] for p in parts])
    m, n = v10.shape[1], v01.shape[1]
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def _two_sided(difference: float, variance: float) -> tuple[float, float]:
    """z and two-sided normal p of ``difference`` with ``variance``; a zero variance gives p 1 for no
    difference and 0 otherwise."""
    if variance <= 1e-15:
        return (0.0, 1.0) if abs(difference) <= 1e-12 else (math.copysign(math.inf, difference), 0.0)
    z = difference / math.sqrt(variance)
    return z, float(2 * norm.sf(abs(z)))


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's two-sided test that two scores of the same images have the same AUROC."""
    aucs, cov = delong_covariance(labels, [scores_a, scores_b])
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z, p = _two_sided(float(aucs[1] - aucs[0]), float(var_diff))
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1]), z, p)


# -- bootstrap -------------------------------------------------------------------------------------------
def stratified_draws(n_pos: int, n_neg: int, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``n_resamples`` stratified resamples: ``[B, n_pos]`` into the defective images, then
    ``[B, n_neg]`` into the good ones (drawn in that order from ``rng``)."""
    return rng.integers(0, n_pos, size=(n_resamples, n_pos)), rng.integers(0, n_neg, size=(n_resamples, n_neg))


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items occurs in each row of ``draws``: ``[B, n]``."""
    b = len(draws)
    flat = (np.arange(b)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _resampled_aurocs(pos: np.ndarray, neg: np.ndarray, pos_counts: np.ndarray, neg_counts: np.ndarray) -> np.ndarray:
    """AUROC of each resample given how often it holds each image: ``[B]``, no pairwise matrix."""
    order = np.argsort(neg, kind="stable")
    neg_sorted = neg[order]
    below = np.zeros((len(neg_counts), len(neg) + 1))
    np.cumsum(neg_counts[:, order], axis=1, out=below[:, 1:])  # below[:, k]: draws of the k lowest
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    wins = below[:, lo] + 0.5 * (below[:, hi] - below[:, lo])  # [B, n_pos]
    return (pos_counts * wins).sum(axis=1) / (len(pos) * len(neg))


def bootstrap_aurocs(labels, scores: list, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``[len(scores), n_resamples]`` AUROCs of stratified resamples, the same images for every score."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    pos, neg = _split(labels, scores)
    pos_draws, neg_draws = stratified_draws(len(pos[0]), len(neg[0]), n_resamples, np.random.default_rng(seed))
    out = np.empty((len(scores), n_resamples))
    chunk = max(1, 2_000_000 // (len(pos[0]) + len(neg[0])))  # bounded temporaries
    for start in range(0, n_resamples, chunk):
        rows = slice(start, start + chunk)
        pc, nc = _counts(pos_draws[rows], len(pos[0])), _counts(neg_draws[rows], len(neg[0]))
        for i, (p, q) in enumerate(zip(pos, neg)):
            out[i, rows] = _resampled_aurocs(p, q, pc, nc)
    return out


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def bootstrap_auroc(labels, scores, n_resamples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Percentile ``confidence`` interval of the AUROC from stratified resamples (seeded)."""
    return percentile_interval(bootstrap_aurocs(labels, [scores], n_resamples, seed)[0], confidence)


@dataclass(frozen=True)
class PairedBootstrapResult:
    """AUROC of b minus AUROC of a, its bootstrap standard error and interval, and the two-sided p."""

    difference: float
    se: float
    ci95: tuple[float, float]
    p: float


def paired_bootstrap_test(labels, scores_a, scores_b, n_resamples: int = 2000, seed: int = 0) -> PairedBootstrapResult:
    """Paired, stratified bootstrap of ``AUROC(b) - AUROC(a)``; p from the normal with the bootstrap SE."""
    (pa, pb), (na, nb) = _split(labels, [scores_a, scores_b])
    diff = _mann_whitney(pb, nb) - _mann_whitney(pa, na)
    boot = bootstrap_aurocs(labels, [scores_a, scores_b], n_resamples, seed)
    d = boot[1] - boot[0]
    se = float(np.std(d, ddof=1)) if n_resamples > 1 else 0.0
    _, p = _two_sided(diff, se * se)
    return PairedBootstrapResult(diff, se, percentile_interval(d), p)


def _mann_whitney(pos: np.ndarray, neg: np.ndarray) -> float:
    ranks = rankdata(np.concatenate([pos, neg]))[: len(pos)]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def significance(difference: float, p: float, alpha: float = ALPHA) -> str:
    """:data:`GAIN` or :data:`LOSS` where ``p < alpha`` (by the sign of ``difference``), else :data:`NO_DIFFERENCE`."""
    if p < alpha and difference > 0:
        return GAIN
    if p < alpha and difference < 0:
        return LOSS
    return NO_DIFFERENCE


# -- over seeds ------------------------------------------------------------------------------------------
def seed_summary(values: list, confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> dict | None:
    """``{"mean", "std", "ci95", "n"}`` of the non-missing ``values`` (one per seed): sample standard
    deviation and Student-t interval of the mean, clipped to ``bounds`` (std and ci95 None for a single
    value); None if all missing."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(vals) == 0:
        return None
    mean = float(vals.mean())
    if len(vals) == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1}
    std = float(vals.std(ddof=1))
    half = float(student_t.ppf((1 + confidence) / 2, len(vals) - 1)) * std / math.sqrt(len(vals))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": std, "ci95": [low, high], "n": int(len(vals))}
