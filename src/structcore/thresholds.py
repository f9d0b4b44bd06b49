"""Decision thresholds from train-good scores that behave like unseen good images.

StructCore's statistics (mu, sigma, lambda) are fitted in-sample, the paper's way; the thresholds come
from a separate *threshold calibration* of the same train-good images:

* ``leave-one-out``: each train image is scored against the bank without the entries that came from it;
* ``k-fold``: the train images are split into folds and each fold is scored against a bank built (same
  coreset rule) from the other folds only;
* ``in-sample``: the train images' own scores (optimistic: an image's own patches sit in the bank).

The user states the false-reject rate ``alpha`` they accept; with ``n`` calibration scores the threshold
is the ``ceil((n + 1) * (1 - alpha))``-th smallest: if a new good image is exchangeable with the
calibration images, it scores above that threshold with probability at most ``alpha`` (the split-conformal
bound). With too few images (``n < 1 / alpha - 1``) no order statistic gives that bound: the threshold is
the largest score and a warning says how many images are needed.

The normalised score is ``(s - m) / (t - m)`` with ``m`` the median calibration score and ``t`` the
threshold: 0 is the typical good image, 1.0 the threshold, higher is more anomalous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import ConfigError

THRESHOLD_CALIBRATIONS = ("leave-one-out", "k-fold", "in-sample")
#: The threshold of the anomaly map's pixels is calibrated on each calibration image's map peak.
PIXEL = "pixel"


def conformal_rank(n: int, false_reject_rate: float) -> int:
    """1-based rank of the order statistic whose exceedance rate is at most ``false_reject_rate``,
    capped at ``n`` (then the bound does not hold)."""
    return min(n, math.ceil((n + 1) * (1 - false_reject_rate) - 1e-9))


def threshold_at(scores: np.ndarray, false_reject_rate: float) -> float:
    """The :func:`conformal_rank`-th smallest of ``scores``."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    return float(scores[conformal_rank(len(scores), false_reject_rate) - 1])


def check_rate(false_reject_rate) -> float:
    if isinstance(false_reject_rate, bool) or not isinstance(false_reject_rate, (int, float)) or not 0 < false_reject_rate < 1:
        raise ConfigError(f"the false-reject rate must be a number in (0, 1), e.g. 0.01; got {false_reject_rate!r}")
    return float(false_reject_rate)


@dataclass
class Thresholds:
    """One category's decision thresholds: per image score and for the map's pixels (``"pixel"``), the
    calibration scores they came from, and how each was set (``"rate"`` or a user's ``"value"``)."""

    method: str
    false_reject_rate: float
    scores: dict[str, np.ndarray]  # calibration scores: base, struct, hybrid and pixel (map peaks)
    values: dict[str, float] = field(default_factory=dict)
    set_by: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why the method differs from the one asked for

    @classmethod
    def from_scores(cls, method: str, scores: dict[str, np.ndarray], false_reject_rate: float,
                    notes: list[str] | None = None) -> Thresholds:
        if method not in THRESHOLD_CALIBRATIONS:
            raise ConfigError(f"threshold calibration must be one of {THRESHOLD_CALIBRATIONS}, got {method!r}")
        scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
        return cls(method, check_rate(false_reject_rate), scores, notes=list(notes or [])).at_rate(false_reject_rate)

    @property
    def n_images(self) -> int:
        return len(next(iter(self.scores.values())))

    def at_rate(self, false_reject_rate: float) -> Thresholds:
        """These thresholds, every one re-derived for ``false_reject_rate``."""
        rate = check_rate(false_reject_rate)
        values = {name: threshold_at(s, rate) for name, s in self.scores.items()}
        return replace(self, false_reject_rate=rate, values=values, set_by=dict.fromkeys(values, "rate"))

    def with_value(self, name: str, value: float) -> Thresholds:
        """These thresholds with ``name``'s set to a given value."""
        if name not in self.scores:
            raise ConfigError(f"no threshold named {name!r}; choose one of {', '.join(self.scores)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"a threshold must be a finite number, got {value!r}")
        return replace(self, values={**self.values, name: float(value)}, set_by={**self.set_by, name: "value"})

    def normalise(self, name: str, value):
        """``value`` of score ``name`` on the scale where 0 is the median calibration score and 1.0 the
        threshold (``value / threshold`` when the two coincide)."""
        t, m = self.values[name], float(np.median(self.scores[name]))
        if t - m <= 1e-12 * max(abs(t), 1.0):  # (almost) all calibration scores equal: value / threshold
            m = t - (abs(t) or 1.0)
        return (np.asarray(value, dtype=np.float64) - m) / (t - m)

    def rejected_share(self, name: str) -> float:
        """Share of the calibration images above the threshold (what the rate promises for new ones)."""
        return float(np.mean(self.scores[name] > self.values[name]))

    def warnings(self) -> list[str]:
        n, rate = self.n_images, self.false_reject_rate
        if math.ceil((n + 1) * (1 - rate) - 1e-9) <= n:
            return list(self.notes)
        need = math.ceil(1 / rate - 1 - 1e-9)
        return [*self.notes, f"{n} calibration images are too few for a false-reject rate of {rate:g} (it needs at least {need}): "
                f"the thresholds are the largest train-good scores and new good images may be rejected more often; "
                f"fit on at least {need} good images or raise --false-reject-rate to {1 / (n + 1):.3g} or more"]

    def record(self) -> dict:
        """The manifest's description (the scores themselves are saved as tensors)."""
        return {"method": self.method, "images": self.n_images, "false_reject_rate": self.false_reject_rate,
                "values": dict(self.values), "set_by": dict(self.set_by), "notes": list(self.notes)}
