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


def pixel_decisions(masks: np.ndarray, maps: np.ndarray, threshold: float) -> dict:
    """Precision, recall and F1 of the pixels above ``threshold`` against the masks (all images' pixels)."""
    tp = fp = fn = 0
    for mask, m in zip(masks, maps):  # image by image: no pixel-wide temporaries
        above = m > threshold
        tp += int((above & mask).sum())
        fp += int((above & ~mask).sum())
        fn += int((~above & mask).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1}


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
