"""Pictures people look at: heatmap overlays of anomaly maps on the input image.

The colour scale is fixed per category and anchored to its pixel threshold (:func:`color_range`), so a
good part never turns red just because its own maximum is stretched to red. Pixels the model did not
see (NaN in an original-frame map: outside the crop) are shown dimmed and uncoloured.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

UNSEEN_DIM = 0.45  # brightness of the pixels outside the model's crop
BOX_COLOR = (255, 255, 255)


def heatmap(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The map coloured with 'jet' between ``vmin`` and ``vmax``, as uint8 RGB ``[H, W, 3]`` (NaN as vmin)."""
    scaled = np.clip((np.nan_to_num(anomaly_map, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return (colormaps["jet"](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45) -> Image.Image:
    """Blend the heatmap over ``image`` (in the map's frame); NaN pixels are dimmed, not coloured."""
    if image.size != anomaly_map.shape[::-1]:
        image = image.resize(anomaly_map.shape[::-1], Image.BILINEAR)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * heatmap(anomaly_map, vmin, vmax).astype(np.float32)
    unseen = np.isnan(anomaly_map)
    blended[unseen] = UNSEEN_DIM * base[unseen]
    return Image.fromarray(blended.round().astype(np.uint8))


def overlay_original(image: Image.Image, prediction, alpha: float = 0.45) -> Image.Image:
    """A prediction's heatmap over its original image, on the category's fixed colour scale, with a box
    around each defect region."""
    vmin, vmax = color_range(prediction.pixel_threshold)
    picture = overlay(image, prediction.original_map(), vmin, vmax, alpha)
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 300))
    for r in prediction.regions:
        draw.rectangle((r.x0, r.y0, r.x1 - 1, r.y1 - 1), outline=BOX_COLOR, width=width)
    return picture


def color_range(threshold: float) -> tuple[float, float]:
    """A fixed colour scale per category: blue at half the pixel threshold, red from 1.5x it."""
    return 0.5 * threshold, 1.5 * threshold
