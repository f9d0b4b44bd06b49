"""StructCore: a structural descriptor of the anomaly map, calibrated on train-good maps (paper 3.6).

phi(S) = [std(S), mean of the top r of S, TV(S)] (eq. 7-9); D_struct = a distance of phi from the
train-good mean (diagonal Mahalanobis by default, eq. 10); S_hyb = S_base + lambda * D_struct with
lambda_auto = Std(S_base) / (Std(D_struct) + eps) over train-good images (eq. 11-12).

Degenerate calibrations are detected and recorded in ``StructCalibration.warnings`` (and so in the model
manifest): when D_struct has (almost) no spread over the calibration images (two images always give every
diagonal-Mahalanobis distance sqrt(len(components))), or a descriptor dimension has a standard deviation
below :data:`REL_SPREAD` times its mean (near-identical images: sigma ~ 1e-9 turns any other image into a
D_struct of 1e5+), lambda_auto falls back to **0**, so the hybrid score is the base score; a fixed ``lam``
is kept and warned about. The decision thresholds are calibrated separately (:mod:`structcore.thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, DataError
from .maps import pool

EPS = 1e-6
#: A spread (standard deviation) at most this share of the mean counts as none (degenerate calibration).
REL_SPREAD = 1e-4
_SIGMA_DISTANCES = ("mahalanobis", "l1_std", "chebyshev_std")
COMPONENTS = ("std", "topk", "tv")
DISTANCES = ("mahalanobis", "l1_std", "chebyshev_std", "euclidean", "manhattan", "chebyshev", "cosine")


def total_variation(maps: np.ndarray) -> np.ndarray:
    """Anisotropic TV of each map ``[B, H, W]``, divided by H*W (eq. 9)."""
    h, w = maps.shape[1:]
    dy = np.abs(np.diff(maps, axis=1)).sum((1, 2))
    dx = np.abs(np.diff(maps, axis=2)).sum((1, 2))
    return (dy + dx) / (h * w)


def descriptor(maps: np.ndarray, components: tuple[str, ...] = COMPONENTS, top_ratio: float = 0.01) -> np.ndarray:
    """phi for each map ``[B, H, W]`` -> ``[B, len(components)]`` (float64), columns in the order given."""
    unknown = set(components) - set(COMPONENTS)
    if unknown or not components:
        raise ConfigError(f"descriptor components must be a non-empty subset of {COMPONENTS}, got {components}")
    maps = maps.astype(np.float64, copy=False)
    columns = {
        "std": lambda: maps.reshape(len(maps), -1).std(1),
        "topk": lambda: pool(maps, "topk", top_ratio),
        "tv": lambda: total_variation(maps),
    }
    return np.stack([columns[c]() for c in components], axis=1)


def select_components(phi: np.ndarray, components: tuple[str, ...]) -> np.ndarray:
    """The columns of ``phi`` (all of :data:`COMPONENTS`, in that order) for ``components``, in their order.

    Row-major like :func:`descriptor`'s output: the column means then add up in the same order.
    """
    return np.ascontiguousarray(phi[:, [COMPONENTS.index(c) for c in components]])


def structural_distance(phi: np.ndarray, mu: np.ndarray, sigma: np.ndarray, kind: str = "mahalanobis") -> np.ndarray:
    """Distance of each row of ``phi`` from the train-good mean ``mu`` (Table 6's seven choices)."""
    if kind in ("mahalanobis", "l1_std", "chebyshev_std"):
        z = (phi - mu) / (sigma + EPS)
    elif kind in ("euclidean", "manhattan", "chebyshev"):
        z = phi - mu
    elif kind == "cosine":
        cos = phi @ mu / (np.linalg.norm(phi, axis=1) * np.linalg.norm(mu) + EPS)
        return 1.0 - cos
    else:
        raise ConfigError(f"unknown structural distance {kind!r}; choose one of {DISTANCES}")
    if kind in ("mahalanobis", "euclidean"):
        return np.sqrt((z * z).sum(1))
    if kind in ("l1_std", "manhattan"):
        return np.abs(z).sum(1)
    return np.abs(z).max(1)


@dataclass
class StructCalibration:
    """Train-good statistics of one category: phi mean/std and lambda."""

    components: tuple[str, ...]
    top_ratio: float
    distance: str
    mu: np.ndarray
    sigma: np.ndarray
    lam: float
    warnings: list[str] = field(default_factory=list)  # what is degenerate about this calibration (see module)

    @classmethod
    def fit(
        cls,
        phi: np.ndarray,
        base: np.ndarray,
        components: tuple[str, ...] = COMPONENTS,
        top_ratio: float = 0.01,
        distance: str = "mahalanobis",
        lam: float | None = None,
    ) -> StructCalibration:
        """Fit on train-good descriptors ``phi`` ``[N, len(components)]`` (columns in ``components``'
        order) and base scores ``[N]``; ``lam=None`` means lambda_auto (eq. 11)."""
        if distance not in DISTANCES:
            raise ConfigError(f"unknown structural distance {distance!r}; choose one of {DISTANCES}")
        phi = np.asarray(phi, dtype=np.float64)
        if phi.ndim != 2 or phi.shape[1] != len(components):
            raise ValueError(f"phi must be [N, {len(components)}] for components {components}, got {phi.shape}")
        if len(phi) < 2:
            raise DataError("StructCore calibration needs the maps of at least 2 train-good images")
        n = len(phi)
        mu, sigma = phi.mean(0), phi.std(0)
        d = structural_distance(phi, mu, sigma, distance)
        notes = []
        flat = [c for c, m, s in zip(components, mu, sigma) if s <= REL_SPREAD * max(abs(m), EPS)]
        problem = None
        if np.std(d) <= REL_SPREAD * max(float(np.abs(d).mean()), EPS):
            problem = f"D_struct has no spread over the {n} calibration images (std {np.std(d):.3g})"
        elif flat and distance in _SIGMA_DISTANCES:
            problem = (f"descriptor {', '.join(flat)} has (almost) no spread over the {n} calibration images "
                       "(they are near-identical)")
        if problem and lam is None:
            lam = 0.0
            notes.append(f"{problem}: lambda set to 0, so the hybrid score is the base score; fit on more, and "
                         "more varied, good images (a few dozen)")
        elif problem:
            notes.append(f"{problem}: with the fixed lambda {lam} the struct and hybrid scores are unreliable; "
                         "fit on more, and more varied, good images")
        elif lam is None:
            lam = float(np.std(base) / (np.std(d) + EPS))
        return cls(tuple(components), top_ratio, distance, mu, sigma, float(lam), warnings=notes)

    @classmethod
    def from_maps(cls, maps: np.ndarray, base: np.ndarray, components: tuple[str, ...] = COMPONENTS,
                  top_ratio: float = 0.01, **options) -> StructCalibration:
        """:meth:`fit` on train-good maps ``[N, H, W]`` (their descriptors are computed here)."""
        return cls.fit(descriptor(maps, components, top_ratio), base, components, top_ratio, **options)

    def combine(self, base: np.ndarray, d_struct: np.ndarray) -> dict[str, np.ndarray]:
        """The three image scores: base, struct-only and hybrid (eq. 12)."""
        return {"base": base, "struct": d_struct, "hybrid": base + self.lam * d_struct}

    def scores_from_descriptors(self, phi: np.ndarray, base: np.ndarray) -> dict[str, np.ndarray]:
        """Base, struct-only and hybrid scores from descriptors ``[B, len(components)]``."""
        return self.combine(base, structural_distance(phi, self.mu, self.sigma, self.distance))

    def scores(self, maps: np.ndarray, base: np.ndarray) -> dict[str, np.ndarray]:
        """Base, struct-only and hybrid scores of maps ``[B, H, W]`` with base scores ``[B]``."""
        return self.scores_from_descriptors(descriptor(maps, self.components, self.top_ratio), base)
