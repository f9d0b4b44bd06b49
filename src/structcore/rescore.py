"""StructCore on its own: a decision layer over any memory-bank detector's anomaly maps (paper Table 2).

:class:`StructCoreScorer` fits on train-good anomaly maps from any detector and rescores test maps
with base (max), struct (D_struct) and hybrid scores and their thresholds. :func:`rescore_folders` does the
same for ``.npy`` maps written by another tool: ``TRAIN_DIR/*.npy`` (good images) and ``TEST_DIR``, whose
maps are labelled by subfolder (``good/``, in any case = 0, any other subfolder = 1) when it has subfolders.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, NotFittedError
from .evaluation.artifacts import write_scores
from .evaluation.schema import ScoreFile
from .files import atomic_write_text
from .maps import POOLINGS, pool
from .scoring import SCORES
from .structure import COMPONENTS, DISTANCES, StructCalibration, descriptor
from .thresholds import Thresholds, check_rate


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class StructCoreScorer:
    """Fits StructCore's statistics, lambda and thresholds on train-good maps; scores test maps.

    The thresholds are in-sample (:mod:`structcore.thresholds`): the train maps are all there is, so they
    are optimistic when the train maps were scored against a bank holding the train images themselves.

    Maps may differ in size between images (each map's descriptor is computed on its own).
    """

    def __init__(self, components=COMPONENTS, top_ratio: float = 0.01, distance: str = "mahalanobis",
                 lam: float | None = None, false_reject_rate: float = 0.01, pooling: str = "max"):
        components = tuple(components)
        checks = (
            (distance in DISTANCES, f"distance must be one of {DISTANCES}, got {distance!r}"),
            (pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {pooling!r}"),
            (len(components) > 0 and set(components) <= set(COMPONENTS) and len(set(components)) == len(components),
             f"components must be distinct names from {COMPONENTS}, got {components}"),
            (_real(top_ratio) and 0 < top_ratio <= 1, f"top_ratio must be in (0, 1], got {top_ratio!r}"),
            (lam is None or (_real(lam) and 0 <= lam < float("inf")), f"lam must be >= 0 or None (lambda_auto), got {lam!r}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.components, self.top_ratio, self.distance = components, top_ratio, distance
        self.lam, self.false_reject_rate, self.pooling = lam, check_rate(false_reject_rate), pooling
        self.calibration_: StructCalibration | None = None
        self.train_scores_: dict[str, np.ndarray] | None = None
        self._thresholds: Thresholds | None = None

    def _describe(self, maps) -> tuple[np.ndarray, np.ndarray]:
        maps = [np.asarray(m, dtype=np.float32) for m in maps]
        if not maps:
            raise DataError("no anomaly maps given")
        bad = [i for i, m in enumerate(maps) if m.ndim != 2 or not np.isfinite(m).all()]
        if bad:
            m = maps[bad[0]]
            what = f"has shape {m.shape}" if m.ndim != 2 else "holds NaN or infinite values"
            raise DataError(f"anomaly maps must be finite 2-D arrays; map {bad[0]} {what}")
        phi = np.concatenate([descriptor(m[None], self.components, self.top_ratio) for m in maps])
        base = np.array([pool(m[None], self.pooling, self.top_ratio)[0] for m in maps], dtype=np.float64)
        return phi, base

    def fit(self, train_maps: Iterable[np.ndarray]) -> StructCoreScorer:
        phi, base = self._describe(train_maps)
        self.calibration_ = StructCalibration.fit(
            phi, base, self.components, self.top_ratio, self.distance, self.lam
        )
        self.train_scores_ = self.calibration_.scores_from_descriptors(phi, base)
        self._thresholds = Thresholds.from_scores("in-sample", self.train_scores_, self.false_reject_rate)
        return self

    def score(self, maps: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        """Base, struct and hybrid scores of each map."""
        self._require_fitted()
        return self.calibration_.scores_from_descriptors(*self._describe(maps))

    def _require_fitted(self):
        if self.calibration_ is None:
            raise NotFittedError("This StructCoreScorer is not fitted yet. Call fit(train_good_maps) first.")

    @property
    def thresholds_(self) -> dict[str, float]:
        """The thresholds of the three scores for the false-reject rate (in-sample order statistics)."""
        self._require_fitted()
        return dict(self._thresholds.values)


@dataclass
class MapSet:
    """``.npy`` anomaly maps read from a folder, with labels when the folder has subfolders."""

    paths: list[Path]
    maps: list[np.ndarray]
    labels: np.ndarray | None
    defect_types: list[str]


def read_maps(folder: str | Path) -> MapSet:
    """Every ``*.npy`` under ``folder`` (sorted); ``[H, W]``, ``[1, H, W]`` and ``[H, W, 1]`` arrays."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of .npy anomaly maps")
    paths = sorted(folder.rglob("*.npy"))
    if not paths:
        raise DataError(f"{folder}: no .npy anomaly maps in this folder")
    maps = []
    for p in paths:
        try:
            m = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # an empty file gives EOFError
            raise DataError(f"{p}: not a readable .npy array ({e})") from None
        m = np.squeeze(m) if m.ndim == 3 and 1 in (m.shape[0], m.shape[-1]) else m
        if m.ndim != 2 or m.size == 0 or not np.issubdtype(m.dtype, np.number) or not np.isfinite(m).all():
            raise DataError(f"{p}: an anomaly map must be a finite numeric 2-D array, got shape {m.shape} {m.dtype}")
        maps.append(m.astype(np.float32))
    groups = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "" for p in paths]
    labelled = all(groups)
    labels = np.array([0 if g.lower() == "good" else 1 for g in groups], dtype=np.int64) if labelled else None
    return MapSet(paths, maps, labels, groups if labelled else [""] * len(paths))


def rescore_folders(train_dir: str | Path, test_dir: str | Path, out: str | Path, name: str = "rescored",
                    scorer: StructCoreScorer | None = None) -> dict:
    """Fit on ``train_dir``'s maps, score ``test_dir``'s, write ``OUT/rescored.csv``, ``OUT/scores/NAME.json``
    (the benchmark's scores schema) and, with labelled test maps, Figure 2 ``OUT/figure2_NAME.png``."""
    out = Path(out)
    train, test = read_maps(train_dir), read_maps(test_dir)
    scorer = (scorer or StructCoreScorer()).fit(train.maps)
    scores = scorer.score(test.maps)
    thresholds = scorer.thresholds_
    lines = ["map,label," + ",".join(f"{s}_score" for s in SCORES) + "," + ",".join(f"{s}_decision" for s in SCORES)]
    for i, p in enumerate(test.paths):
        label = "" if test.labels is None else str(int(test.labels[i]))
        values = ",".join(f"{scores[s][i]:.9g}" for s in SCORES)
        decisions = ",".join("reject" if scores[s][i] > thresholds[s] else "accept" for s in SCORES)
        lines.append(f"{p.relative_to(test_dir)},{label},{values},{decisions}")
    atomic_write_text(out / "rescored.csv", "\n".join(lines) + "\n")
    scored = ScoreFile(
        category=name, coreset_ratio=None, calibration="in-sample", false_reject_rate=scorer.false_reject_rate,
        threshold_calibration="in-sample",
        lam=scorer.calibration_.lam, thresholds=thresholds, train_paths=[str(p) for p in train.paths],
        train=scorer.train_scores_, paths=[str(p) for p in test.paths], labels=test.labels,
        defect_types=test.defect_types, test={s: np.asarray(v, np.float64) for s, v in scores.items()},
    )
    summary = {"n_train": len(train.paths), "n_test": len(test.paths), "lambda": scored.lam, "thresholds": thresholds,
               "rejected": {s: int((scores[s] > thresholds[s]).sum()) for s in SCORES}, "figure": None}
    if test.labels is not None and 0 < test.labels.sum() < len(test.labels):
        from .metrics import auroc

        summary["auroc"] = {s: auroc(test.labels, scores[s]) for s in SCORES}
    write_scores(out, scored)
    if test.labels is not None:
        from .report.figures import figure_base_vs_hybrid

        figure = out / f"figure2_{name}.png"
        summary["crossover"] = figure_base_vs_hybrid(scored, figure).as_dict()
        summary["figure"] = str(figure)
    return summary
