"""Where and how big: anomaly maps in the original image's frame, and the defect regions above a threshold.

The model sees the image resized to ``resize`` x ``resize`` and center-cropped to ``crop`` x ``crop``
(:class:`~structcore.features.Preprocess`). :func:`to_original_frame` undoes both: every pixel of the
original image whose centre falls inside the crop gets the map bilinearly interpolated at that point;
pixels outside the crop were never seen by the model and are NaN (no region, no mask pixel, and the
pixel metrics count them as not seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .features import Preprocess


@dataclass(frozen=True)
class Region:
    """One connected region above the pixel threshold, in original-image pixels (``x1``/``y1`` exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    peak: float

    def as_dict(self) -> dict:
        return asdict(self)


def _sample_matrix(n_out: int, n_in: int, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of linear-interpolation weights ``[n_out, n_in]`` for output pixel centres mapped to map
    coordinate ``(i + 0.5) * scale - offset``, and which outputs fall inside the map."""
    u = (np.arange(n_out) + 0.5) * scale - offset  # continuous coordinate in the crop frame
    inside = (u >= 0) & (u < n_in)
    pos = np.clip(u - 0.5, 0, n_in - 1)  # map pixel i has its centre at i + 0.5
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights, inside


def to_original_frame(anomaly_map: np.ndarray, size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """A crop-frame map ``[crop, crop]`` as a ``[height, width]`` float32 map of the original image of
    ``size`` (width, height); NaN where the original lies outside the crop."""
    width, height = size
    crop = anomaly_map.shape[0]
    if anomaly_map.shape != (crop, crop) or crop != preprocess.crop:
        raise ValueError(f"expected a [{preprocess.crop}, {preprocess.crop}] crop-frame map, got {anomaly_map.shape}")
    wy, in_y = _sample_matrix(height, crop, preprocess.resize / height, preprocess.offset)
    wx, in_x = _sample_matrix(width, crop, preprocess.resize / width, preprocess.offset)
    out = (wy @ anomaly_map.astype(np.float64) @ wx.T).astype(np.float32)
    out[~in_y, :] = np.nan
    out[:, ~in_x] = np.nan
    return out


def region_mask(original_map: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the pixels above ``threshold`` (unseen NaN pixels are never in it)."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(original_map, nan=-np.inf) > threshold


def defect_regions(original_map: np.ndarray, threshold: float) -> list[Region]:
    """Connected regions (8-connected) of pixels above ``threshold``, largest first."""
    mask = region_mask(original_map, threshold)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    peaks = ndimage.maximum(np.nan_to_num(original_map, nan=-np.inf), labels, index)
    regions = []
    for (ys, xs), area, peak in zip(ndimage.find_objects(labels), areas, peaks):
        regions.append(Region(x0=xs.start, y0=ys.start, x1=xs.stop, y1=ys.stop, area=int(area), peak=float(peak)))
    return sorted(regions, key=lambda r: (-r.area, r.y0, r.x0))
