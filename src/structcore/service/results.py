"""A Prediction as the API's JSON: scores against thresholds, the decision, and on request the heatmap
overlay (PNG, base64) and the defect regions, both in the uploaded image's own pixels."""

from __future__ import annotations

import base64
import io
import time

from PIL import Image

from ..detector import Prediction
from ..visualize import overlay_original


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def prediction_json(pred: Prediction, image: Image.Image, name: str, *, routed: bool, with_overlay: bool,
                    with_regions: bool) -> dict:
    """The API's answer for one image (``timings_ms`` gets its ``render`` entry here)."""
    started = time.perf_counter()
    out = {
        "file": name,
        "category": pred.category,
        "routed": routed,
        "decision": pred.decision,
        "decision_score": pred.decision_score,
        "score": pred.score,
        "threshold": pred.threshold,
        "normalised_score": pred.normalised_score,
        "scores": dict(pred.scores),
        "thresholds": dict(pred.thresholds),
        "normalised_scores": dict(pred.normalised_scores),
        "pixel_threshold": pred.pixel_threshold,
        "image_size": list(pred.image_size),
    }
    if with_regions:
        out["regions"] = [r.as_dict() for r in pred.regions]
    if with_overlay:
        out["overlay_png"] = png_base64(overlay_original(image, pred))
    out["timings_ms"] = {"render": 1000 * (time.perf_counter() - started)}
    return out
