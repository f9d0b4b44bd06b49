"""Results over several seeds: each seed refits (projection, coreset, routing) on the same cached features.

:func:`seed_statistics` turns the class-separated blocks of every seed into results.json's
``statistics``: per coreset setting, per category and for the category mean, every image and pixel
metric as ``{"mean", "std", "ci95", "n"}`` over seeds (:func:`~.statistics.seed_summary`), the
bootstrap interval of each AUROC averaged over seeds, and hybrid against base: its difference over
seeds, DeLong's p of every seed, their median (``delong_p``) and the significance class.

A category's class is :data:`~.statistics.GAIN` (or ``LOSS``) when DeLong's test finds a significant
gain (or loss) at ``p < 0.05`` in more than half of the seeds, else :data:`~.statistics.NO_DIFFERENCE`.
"""

from __future__ import annotations

import numpy as np

from .schema import IMAGE_KEYS, PIXEL_KEYS, SCORES
from .statistics import GAIN, LOSS, NO_DIFFERENCE, seed_summary

FULL_KEYS = (*PIXEL_KEYS, "not_seen", "not_seen_defect")


def _summaries(rows: list[dict | None], keys) -> dict | None:
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    return {k: seed_summary([r.get(k) for r in rows], bounds=(0.0, 1.0)) for k in keys}


def _metrics(rows: list[dict]) -> dict:
    """Summaries of the image, pixel and full-frame pixel metrics of one category (or mean), one row a seed."""
    out = {
        "image": {s: _summaries([r["image"][s] for r in rows], IMAGE_KEYS) for s in SCORES},
        "pixel": _summaries([r["pixel"] for r in rows], PIXEL_KEYS),
        "pixel_full": _summaries([r.get("pixel_full") for r in rows], FULL_KEYS),
    }
    diff = [None if None in (r["image"]["hybrid"]["auroc"], r["image"]["base"]["auroc"])
            else r["image"]["hybrid"]["auroc"] - r["image"]["base"]["auroc"] for r in rows]
    out["hybrid_minus_base"] = seed_summary(diff, bounds=(-1.0, 1.0))
    return out


def _tests(rows: list[dict]) -> dict:
    """Bootstrap intervals averaged over seeds and DeLong's test of hybrid against base in every seed."""
    stats = [r["statistics"] for r in rows if r.get("statistics")]
    if not stats:
        return {"auroc_ci95": None, "delong_p": None, "delong_p_by_seed": [], "significant_seeds": None,
                "significance": None}
    ci = {s: [float(np.mean([x["auroc_ci95"][s][i] for x in stats])) for i in (0, 1)] for s in SCORES}
    tests = [x["hybrid_vs_base"] for x in stats]
    counts = {c: sum(t["significance"] == c for t in tests) for c in (GAIN, LOSS)}
    cls = next((c for c in (GAIN, LOSS) if counts[c] > len(tests) / 2), NO_DIFFERENCE)
    return {"auroc_ci95": ci, "delong_p": float(np.median([t["delong_p"] for t in tests])),
            "delong_p_by_seed": [t["delong_p"] for t in tests],
            "bootstrap_p_by_seed": [t["bootstrap_p"] for t in tests], "significant_seeds": counts,
            "significance": cls}


def seed_statistics(per_seed: dict[int, dict]) -> dict:
    """results.json's ``statistics`` from ``{seed: class_separated blocks}`` (``{key: {"categories", "mean"}}``)."""
    seeds = list(per_seed)
    out = {}
    for key in per_seed[seeds[0]]:
        blocks = [per_seed[s][key] for s in seeds]
        cats = {}
        for name in blocks[0]["categories"]:
            rows = [b["categories"][name] for b in blocks]
            cats[name] = {**_metrics(rows), **_tests(rows)}
        out[key] = {"categories": cats, "mean": _metrics([b["mean"] for b in blocks])}
    return out
