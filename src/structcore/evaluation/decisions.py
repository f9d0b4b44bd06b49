"""Decisions at the stored thresholds: good images rejected and defective images accepted, with 95% Wilson
intervals, per category and pooled over categories, for each threshold calibration side by side."""

from __future__ import annotations

import numpy as np

from .schema import SCORES
from .statistics import wilson_interval


def rate(count: int, n: int) -> dict:
    """A count out of ``n`` with its share and 95% Wilson interval."""
    return {"count": int(count), "n": int(n), "rate": count / n if n else None, "ci95": list(wilson_interval(count, n))}


def decision_counts(labels: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict:
    """Per score: good test images rejected (score > threshold) and defective ones accepted."""
    labels = np.asarray(labels)
    good, bad = labels == 0, labels == 1
    out = {}
    for s in SCORES:
        rejected = np.asarray(scores[s]) > thresholds[s]
        out[s] = {"threshold": float(thresholds[s]),
                  "good_rejected": rate(int((rejected & good).sum()), int(good.sum())),
                  "defective_accepted": rate(int((~rejected & bad).sum()), int(bad.sum()))}
    return out


def pooled(per_category: list[dict]) -> dict:
    """The counts of several categories' :func:`decision_counts` added up (one method's)."""
    out = {}
    for s in SCORES:
        out[s] = {}
        for kind in ("good_rejected", "defective_accepted"):
            count = sum(c[s][kind]["count"] for c in per_category)
            n = sum(c[s][kind]["n"] for c in per_category)
            out[s][kind] = rate(count, n)
        out[s]["worst_good_rejected"] = max((c[s]["good_rejected"]["rate"] or 0.0 for c in per_category), default=None)
    return out
