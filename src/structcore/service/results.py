"""A Prediction as the API's JSON: scores against thresholds, the decision, and on request the heatmap
overlay (PNG, base64) and the defect regions, both in the uploaded image's own pixels."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from PIL import Image

from ..detector import Detector, Prediction
from ..regions import defect_regions, to_original_frame
from ..visualize import color_range, overlay


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _issue12_view(detector: Detector, pred: Prediction, image: Image.Image) -> dict:
    """Normalised scores, pixel threshold, regions and overlay of ``pred`` (stand-ins until
    Prediction carries them: see issue 12)."""
    if getattr(pred, "normalised_scores", None) is not None:
        return {"normalised_scores": pred.normalised_scores, "pixel_threshold": pred.pixel_threshold,
                "regions": lambda: pred.regions, "overlay": lambda: _overlay_original(image, pred)}
    record = detector.categories_[pred.category].calibration_record
    normalised = {}
    for name, score in pred.scores.items():
        median = float(np.median(record.scores[name])) if record is not None else 0.0
        normalised[name] = (score - median) / (pred.thresholds[name] - median)
    pixel_threshold = pred.thresholds["base"]
    preprocess = detector.config.preprocess

    def regions():
        return defect_regions(to_original_frame(pred.anomaly_map, image.size, preprocess), pixel_threshold)

    def picture():
        return overlay(preprocess.view(image), pred.anomaly_map, *color_range(pixel_threshold))

    return {"normalised_scores": normalised, "pixel_threshold": pixel_threshold, "regions": regions, "overlay": picture}


def _overlay_original(image, pred):
    from ..visualize import overlay_original  # issue 12

    return overlay_original(image, pred)


def prediction_json(detector: Detector, pred: Prediction, image: Image.Image, name: str, *, routed: bool,
                    with_overlay: bool, with_regions: bool) -> dict:
    """The API's answer for one image (``timings_ms`` gets its ``render`` entry here)."""
    started = time.perf_counter()
    view = _issue12_view(detector, pred, image)
    decision_score = pred.decision_score
    out = {
        "file": name,
        "category": pred.category,
        "routed": routed,
        "decision": pred.decision,
        "decision_score": decision_score,
        "score": pred.scores[decision_score],
        "threshold": pred.thresholds[decision_score],
        "normalised_score": view["normalised_scores"][decision_score],
        "scores": dict(pred.scores),
        "thresholds": dict(pred.thresholds),
        "normalised_scores": dict(view["normalised_scores"]),
        "pixel_threshold": view["pixel_threshold"],
        "image_size": list(image.size),
    }
    if with_regions:
        out["regions"] = [r.as_dict() for r in view["regions"]()]
    if with_overlay:
        out["overlay_png"] = png_base64(view["overlay"]())
    out["timings_ms"] = {"render": 1000 * (time.perf_counter() - started)}
    return out
