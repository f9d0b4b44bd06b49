"""What the accuracy scripts share: a category's test targets and a fitted detector's metrics on them."""

from __future__ import annotations

import numpy as np
import torch

from structcore.data import Category
from structcore.detector import Detector
from structcore.evaluation.protocol import crop_masks
from structcore.scoring import ScoredImages
from structcore.metrics import auroc, pixel_metrics


def test_targets(cat: Category, det: Detector) -> tuple[np.ndarray, np.ndarray | None]:
    """Image labels and ground-truth masks in the detector's crop frame (None without masks)."""
    return np.array([s.label for s in cat.test]), crop_masks(cat, det.config.preprocess)


def evaluate(det: Detector, category: str, features: torch.Tensor, labels, masks) -> tuple[ScoredImages, dict]:
    """Score test ``features`` against ``category``: image AUROC of each score, pixel AUROC and AUPRO."""
    scored = det.score_features(category, features)
    pm = pixel_metrics(masks, scored.maps) if masks is not None else None
    return scored, {
        "image_auroc": {k: float(auroc(labels, np.asarray(v, np.float64))) for k, v in scored.scores.items()},
        "pixel_auroc": None if pm is None else float(pm["auroc"]),
        "aupro": None if pm is None else float(pm["aupro"]),
    }
