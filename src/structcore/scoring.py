"""The one scoring pipeline: features -> kNN patch grids -> anomaly maps -> base score, phi, three scores.

Fitting (train-good calibration), prediction, the benchmark and the speed measurement all go through
:class:`ScoringPipeline`; a timing hook ``on_stage(name, seconds)`` reports the "knn" and "post" stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .knn import MemoryBank
from .maps import anomaly_maps, pool
from .structure import COMPONENTS, StructCalibration, descriptor, select_components

SCORES = ("base", "struct", "hybrid")


@dataclass
class ScoredImages:
    """A batch of images scored against one category.

    ``phi_map`` / ``phi_grid``: the descriptor (all :data:`~structcore.structure.COMPONENTS`) of the final
    maps and of the raw kNN grids; ``peak``: each final map's maximum; ``maps`` is None when not kept;
    ``scores`` is None without calibration.
    """

    grids: torch.Tensor
    base: np.ndarray
    peak: np.ndarray
    phi_map: np.ndarray
    phi_grid: np.ndarray
    maps: np.ndarray | None = None
    scores: dict[str, np.ndarray] | None = None

    def phi(self, on: str) -> np.ndarray:
        """The descriptor StructCore uses when phi is computed ``on`` "map" or "grid"."""
        return self.phi_map if on == "map" else self.phi_grid


@dataclass
class CalibrationRecord:
    """What a category's StructCore statistics were fitted on: the calibration images (indices into the
    train images), their base scores, descriptors and resulting scores."""

    ids: np.ndarray
    base: np.ndarray
    phi_map: np.ndarray
    phi_grid: np.ndarray
    scores: dict[str, np.ndarray]


class ScoringPipeline:
    """Scores features ``[B, P, D]`` against a memory bank with a config's k, map size, blur and pooling."""

    def __init__(self, config, on_stage: Callable[[str, float], None] | None = None):
        self.config = config
        self.on_stage = on_stage

    @contextmanager
    def _stage(self, name: str):
        started = time.perf_counter()
        yield
        if self.on_stage is not None:
            self.on_stage(name, time.perf_counter() - started)

    def grids(self, bank: MemoryBank, features: torch.Tensor, exclude_images=None) -> torch.Tensor:
        """kNN patch-score grids ``[B, rows, cols]``; ``exclude_images[i]`` is image i's own bank id."""
        if exclude_images is not None:
            return self.grids_with_and_without_own(bank, features, exclude_images)[1]
        scores = bank.patch_scores(features.reshape(-1, features.shape[-1]), self.config.k)
        return scores.reshape(len(features), *self.config.grid)

    def grids_with_and_without_own(self, bank: MemoryBank, features: torch.Tensor, own_images) -> tuple[torch.Tensor, torch.Tensor]:
        """Both grids of train images from one kNN search: in-sample, and without image i's own bank
        entries ``own_images[i]`` (leave-one-out)."""
        rows, cols = self.config.grid
        pairs = [bank.patch_scores_with_and_without(f, self.config.k, int(i)) for f, i in zip(features, own_images)]
        return tuple(torch.stack([p[j] for p in pairs]).reshape(len(features), rows, cols) for j in (0, 1))

    def maps(self, grids: torch.Tensor) -> np.ndarray:
        """Final anomaly maps ``[B, crop, crop]`` of kNN grids (upsampled, blurred)."""
        crop = self.config.crop
        return anomaly_maps(grids, (crop, crop), self.config.sigma)

    def run(
        self,
        bank: MemoryBank,
        features: torch.Tensor,
        calibration: StructCalibration | None = None,
        *,
        exclude_images=None,
        keep_maps: bool = True,
        chunk: int = 64,
    ) -> ScoredImages:
        """Grids of all ``features`` at once, then maps, base scores, descriptors (and the three scores when
        a calibration is given) ``chunk`` images at a time."""
        with self._stage("knn"):
            grids = self.grids(bank, features, exclude_images)
        return self.finish(grids, calibration, keep_maps=keep_maps, chunk=chunk)

    def run_in_sample_and_left_out(self, bank: MemoryBank, features: torch.Tensor, own_images,
                                   keep_maps: bool = False) -> tuple[ScoredImages, ScoredImages]:
        """Train images scored in-sample and leave-one-out (``own_images``: as in :meth:`grids_with_and_without_own`),
        for the price of one kNN search."""
        with self._stage("knn"):
            grids = self.grids_with_and_without_own(bank, features, own_images)
        return tuple(self.finish(g, keep_maps=keep_maps) for g in grids)

    def finish(self, grids: torch.Tensor, calibration: StructCalibration | None = None, *, keep_maps: bool = True,
               chunk: int = 64) -> ScoredImages:
        """Maps, base scores, descriptors (and scores, given a calibration) of kNN grids, ``chunk`` images at a time."""
        cfg = self.config
        with self._stage("post"):
            parts = [self._post(grids[s : s + chunk], keep_maps) for s in range(0, len(grids), chunk)]
            base, peak, phi_map = (np.concatenate([p[i] for p in parts]) for i in range(3))
            maps = np.concatenate([p[3] for p in parts]) if keep_maps else None
            phi_grid = descriptor(grids.numpy(), COMPONENTS, cfg.top_ratio)
            scored = ScoredImages(grids=grids, base=base, peak=peak, phi_map=phi_map, phi_grid=phi_grid, maps=maps)
            if calibration is not None:
                scored.scores = self.scores(calibration, scored)
        return scored

    def _post(self, grids: torch.Tensor, keep_maps: bool):
        maps = self.maps(grids)
        phi = descriptor(maps, COMPONENTS, self.config.top_ratio)
        return pool(maps, self.config.pooling), maps.max((1, 2)), phi, maps if keep_maps else None

    def scores(self, calibration: StructCalibration, scored: ScoredImages) -> dict[str, np.ndarray]:
        """Base, struct and hybrid scores of scored images under ``calibration``."""
        phi = select_components(scored.phi(self.config.descriptor_on), calibration.components)
        return calibration.scores_from_descriptors(phi, scored.base)

    def calibrate(self, scored: ScoredImages, ids: np.ndarray) -> tuple[StructCalibration, CalibrationRecord]:
        """StructCore's statistics from scored train-good images (``ids``: their indices)."""
        cfg = self.config
        phi = select_components(scored.phi(cfg.descriptor_on), cfg.components)
        calibration = StructCalibration.fit(
            phi, scored.base, cfg.components, cfg.top_ratio, cfg.distance, cfg.lam
        )
        record = CalibrationRecord(
            ids=np.asarray(ids, dtype=np.int64),
            base=scored.base,
            phi_map=scored.phi_map,
            phi_grid=scored.phi_grid,
            scores=calibration.scores_from_descriptors(phi, scored.base),
        )
        return calibration, record
