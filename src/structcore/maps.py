"""Patch scores -> anomaly map: bilinear upsampling to the crop resolution, then a Gaussian blur.

The blur is scipy's ``gaussian_filter`` (sigma 4, truncated at 4 sigma = a 33-tap kernel, 'reflect'
padding: the edge pixel is repeated, d c b a | a b c d), as PatchCore's reference code does it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .errors import ConfigError

POOLINGS = ("max", "mean", "topk")


def anomaly_maps(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """Patch-score grids ``[B, h, w]`` -> final maps ``[B, H, W]`` (float32); ``sigma=0`` skips the blur."""
    if patch_scores.ndim != 3:
        raise ValueError(f"patch scores must be [B, h, w], got shape {tuple(patch_scores.shape)}")
    up = F.interpolate(patch_scores[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = up.numpy()
    if sigma > 0:
        maps = gaussian_filter(maps, sigma=(0, sigma, sigma), mode="reflect", truncate=4.0)
    return maps.astype(np.float32, copy=False)


def pool(maps: np.ndarray, how: str = "max", top_ratio: float = 0.01) -> np.ndarray:
    """Image scores from maps ``[B, H, W]``: ``max``, ``mean`` or ``topk`` (mean of the top ``top_ratio``)."""
    flat = maps.reshape(maps.shape[0], -1)
    if how == "max":
        return flat.max(1)
    if how == "mean":
        return flat.mean(1)
    if how == "topk":
        k = max(1, int(flat.shape[1] * top_ratio))
        return np.partition(flat, -k, axis=1)[:, -k:].mean(1)
    raise ConfigError(f"unknown pooling {how!r}; choose one of {POOLINGS}")
