"""Pictures people look at: heatmap overlays of anomaly maps on the (cropped) input image."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib import colormaps
from PIL import Image



def heatmap(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The map coloured with 'jet' between ``vmin`` and ``vmax``, as uint8 RGB ``[H, W, 3]``."""
    scaled = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return (colormaps["jet"](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45) -> Image.Image:
    """Blend the heatmap over ``image`` (already cropped to the map's frame)."""
    if image.size != anomaly_map.shape[::-1]:
        image = image.resize(anomaly_map.shape[::-1], Image.BILINEAR)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * heatmap(anomaly_map, vmin, vmax).astype(np.float32)
    return Image.fromarray(blended.round().astype(np.uint8))


def color_range(threshold: float) -> tuple[float, float]:
    """A fixed colour scale per category: blue well below the base threshold, red at 1.5x it."""
    return 0.5 * threshold, 1.5 * threshold
