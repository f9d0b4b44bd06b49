"""Where each category's threshold sits: the score distributions of the train-good threshold calibration,
the good test images and the defective ones, with the stored threshold."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluation.schema import ScoreFile  # noqa: E402
from .figures import DEFECT_COLOR, GOOD_COLOR, _grid_shape, _save  # noqa: E402

CALIBRATION_COLOR = "0.55"


def draw_distributions(ax, s: ScoreFile, score: str):
    """One category: a strip of points per group (jittered), the threshold as a line, counts in the labels."""
    rng = np.random.default_rng(0)
    groups = [("train-good\n(" + s.threshold_calibration + ")", s.threshold_train[score] if s.threshold_train else None,
               CALIBRATION_COLOR)]
    if s.labels is not None:
        test = np.asarray(s.test[score])
        groups += [("test good", test[s.labels == 0], GOOD_COLOR), ("test defective", test[s.labels == 1], DEFECT_COLOR)]
    threshold = s.thresholds[score]
    labels = []
    for row, (name, values, color) in enumerate(groups):
        if values is None or len(values) == 0:
            labels.append(f"{name}\n(none)")
            continue
        values = np.asarray(values, dtype=np.float64)
        above = int((values > threshold).sum())
        ax.scatter(values, row + rng.uniform(-0.28, 0.28, len(values)), s=9, color=color, alpha=0.7, linewidths=0)
        labels.append(f"{name}\n{above}/{len(values)} above")
    ax.axvline(threshold, color="0.1", ls="--", lw=1)
    ax.set_yticks(range(len(groups)), labels, fontsize=7.5)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_title(f"{s.category}: {score} score, threshold {threshold:.4g}", fontsize=9)
    ax.tick_params(axis="x", labelsize=7.5)


def figure_distributions(scores: list[ScoreFile], path, score: str = "hybrid"):
    """A panel per category (see :func:`draw_distributions`)."""
    rows, cols = _grid_shape(len(scores))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.3 * rows + 0.4), squeeze=False)
    for ax, s in zip(axes.flat, scores):
        draw_distributions(ax, s, score)
    for ax in list(axes.flat)[len(scores):]:
        ax.axis("off")
    fig.suptitle(f"{score} score of the threshold's train-good calibration and of the test images "
                 f"(false-reject rate {scores[0].false_reject_rate:g})", fontsize=9.5)
    fig.tight_layout()
    return _save(fig, path)
