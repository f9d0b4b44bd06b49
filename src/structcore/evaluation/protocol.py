"""The protocol: fit every category (phase A), then score its test images (phase B), in two settings.

* ``class_separated``: the category of a test image is known; it is scored against that category.
* ``routed``: one detector holds every category; each test image is routed (paper eq. 3-4) and scored
  against the category it was routed to, whatever that is. Metrics are grouped by the true category.

Both settings run on the same fitted models, one per coreset ratio. Features come from
:mod:`structcore.feature_cache` (raw block tokens on disk), so a second run costs only fitting and scoring.

Class-separated results also carry, per category, the image-level statistics of :func:`image_statistics`
(bootstrap intervals of the AUROCs, DeLong's test of hybrid against base) and the pixel metrics in the
original image frame (:func:`full_frame_pixel_metrics`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import DetectorConfig
from ..data import Category
from ..detector import Detector
from ..feature_cache import CacheContext, FeatureCache
from ..features import FeatureExtractor, Preprocess
from ..images import image_size, load_mask
from ..metrics import image_metrics as _image_metrics
from ..metrics import pixel_metrics as _pixel_metrics
from ..regions import to_original_frame
from ..scoring import CalibrationRecord, ScoredImages
from ..thresholds import PIXEL, Thresholds
from .decisions import decision_counts, pixel_decisions
from .schema import IMAGE_KEYS, PIXEL_KEYS, SCORES, to_json
from .statistics import bootstrap_aurocs, delong_test, paired_bootstrap_test, percentile_interval, significance


def log(msg: str):
    print(msg, flush=True)


class Timer:
    """Seconds spent under each name (a block may count towards several)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, *names: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            for n in names:
                self.totals[n] = self.totals.get(n, 0.0) + dt

    def get(self, name: str) -> float:
        return round(self.totals.get(name, 0.0), 3)


# -- metrics ------------------------------------------------------------------------------------------
def image_metrics(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """AUROC, AP, F1-max of each score; None where the test set lacks good or defective images."""
    if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:  # one class only
        return {s: {k: None for k in IMAGE_KEYS} for s in scores}
    return {s: {k: to_json(_image_metrics(labels, np.asarray(v, np.float64))[k]) for k in IMAGE_KEYS}
            for s, v in scores.items()}


def pixel_metrics(masks: np.ndarray | None, maps: np.ndarray) -> dict | None:
    """Pixel AUROC, AP, F1-max and AUPRO; None without masks (or with masks of one class only)."""
    if masks is None or not masks.any() or masks.all():
        return None
    m = _pixel_metrics(masks, maps)
    return {k: to_json(m[k]) for k in PIXEL_KEYS}


def image_statistics(labels: np.ndarray, scores: dict[str, np.ndarray], n_resamples: int, seed: int) -> dict | None:
    """95% stratified-bootstrap intervals of each score's AUROC (``n_resamples``, seeded), and hybrid
    against base on the same images: DeLong's test and the paired bootstrap; None with one class only."""
    if labels.min(initial=1) == labels.max(initial=0):
        return None
    names = list(scores)
    boot = bootstrap_aurocs(labels, [scores[s] for s in names], n_resamples, seed)
    d = delong_test(labels, scores["base"], scores["hybrid"])
    pb = paired_bootstrap_test(labels, scores["base"], scores["hybrid"], n_resamples, seed)
    return to_json({
        "n_resamples": n_resamples, "bootstrap_seed": seed,
        "auroc_ci95": {s: percentile_interval(boot[i]) for i, s in enumerate(names)},
        "hybrid_vs_base": {"difference": d.difference, "delong_z": d.z, "delong_p": d.p,
                           "bootstrap_se": pb.se, "bootstrap_ci95": pb.ci95, "bootstrap_p": pb.p,
                           "significance": significance(d.difference, d.p)},
    })


def full_frame_pixel_metrics(cat: Category, maps: np.ndarray, preprocess: Preprocess) -> dict | None:
    """Pixel metrics against the full-resolution masks, each crop-frame map mapped back to its original
    image (:func:`structcore.regions.to_original_frame`). The model never saw the border outside the
    crop: those pixels are left out of every metric, and ``not_seen`` / ``not_seen_defect`` are their
    share of all pixels / of the defect pixels. None without masks."""
    if not cat.has_masks:
        return None
    full_maps, full_masks = [], []
    n_all = n_defect = unseen_all = unseen_defect = 0
    for s, m in zip(cat.test, maps):
        size = image_size(s.path)
        mask = load_mask(s.mask_path, size) if s.mask_path is not None else np.zeros(size[::-1], bool)
        full = to_original_frame(m, size, preprocess)
        rows = np.flatnonzero(~np.isnan(full[:, size[0] // 2]))
        cols = np.flatnonzero(~np.isnan(full[size[1] // 2]))
        seen = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        n_all, n_defect = n_all + mask.size, n_defect + int(mask.sum())
        unseen_all += mask.size - full[seen].size
        unseen_defect += int(mask.sum()) - int(mask[seen].sum())
        full_maps.append(full[seen])
        full_masks.append(mask[seen])
    if not any(m.any() for m in full_masks) or all(m.all() for m in full_masks):
        return None
    out = {k: to_json(v) for k, v in _pixel_metrics(full_masks, full_maps).items() if k in PIXEL_KEYS}
    return {**out, "not_seen": unseen_all / n_all, "not_seen_defect": unseen_defect / n_defect if n_defect else None}


def mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def mean_of(rows: list[dict]) -> dict:
    """Plain averages over categories of the per-category results (results.json's ``mean``)."""
    out: dict = {"image": {}, "n_categories": len(rows)}
    for s in SCORES:
        out["image"][s] = {k: mean([r["image"][s][k] for r in rows]) for k in IMAGE_KEYS}
    pix = [r["pixel"] for r in rows if r["pixel"] is not None]
    out["pixel"] = {k: mean([p[k] for p in pix]) for k in PIXEL_KEYS} if pix else None
    out["n_categories_pixel"] = len(pix)
    full = [r["pixel_full"] for r in rows if r.get("pixel_full") is not None]
    if full:
        out["pixel_full"] = {k: mean([p[k] for p in full]) for k in (*PIXEL_KEYS, "not_seen", "not_seen_defect")}
    out["routing_accuracy"] = mean([r["routing_accuracy"] for r in rows])
    return out


# -- features -------------------------------------------------------------------------------------------
class FeatureSource:
    """Fused features through the feature cache: train images in ``fit_precision``, test images in ``precision``."""

    def __init__(self, backbone, weights_sha256: str, config: DetectorConfig, cache: FeatureCache, timer: Timer, *,
                 precision: str, fit_precision: str, device: torch.device, batch_size: int, num_workers: int,
                 progress: bool, compile: bool, runtime: str = "torch"):
        self.backbone = backbone
        self.cache = cache
        self.timer = timer
        self.device = device
        self.precision, self.fit_precision, self.runtime = precision, fit_precision, runtime
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self._extractors = {
            p: (
                FeatureExtractor(backbone, config.blocks, None, p, device, compile, runtime,
                                 f"{config.backbone}:{weights_sha256}", progress),
                CacheContext(config.backbone, weights_sha256, config.preprocess, p, device.type, runtime),
            )
            for p in dict.fromkeys((fit_precision, precision))
        }

    @property
    def depth(self) -> int:
        return self.backbone.depth

    def features(self, paths: Sequence[Path], blocks, fuse: Callable, desc: str, train: bool = False) -> torch.Tensor:
        """``fuse`` of the tokens of ``blocks`` of the images at ``paths``."""
        extractor, context = self._extractors[self.fit_precision if train else self.precision]
        with self.timer("feature_extraction"):
            return self.cache.layer_tokens(extractor, context, paths, blocks, self.batch_size, self.num_workers,
                                           self.progress, desc, reduce=fuse)

    def fill(self, categories: list[Category], blocks: list[int]) -> None:
        """Cache ``blocks`` of every train and test image in one forward pass each (when the cache is on)."""
        if not self.cache.enabled:
            return
        train = [p for c in categories for p in c.train]
        test = [s.path for c in categories for s in c.test]
        for precision, paths in ((self.fit_precision, train), (self.precision, test)):
            extractor, context = self._extractors[precision]
            with self.timer("feature_extraction"):
                self.cache.layer_tokens(extractor, context, paths, blocks, self.batch_size, self.num_workers,
                                        self.progress, f"layer sweep: blocks ({precision})",
                                        reduce=lambda layers: torch.empty(len(layers[0]), 0))


def crop_masks(cat: Category, preprocess: Preprocess) -> np.ndarray | None:
    """Ground-truth masks of the test images in the crop frame ``[N, crop, crop]``; None without masks."""
    if not cat.has_masks:
        return None
    out = np.zeros((len(cat.test), preprocess.crop, preprocess.crop), dtype=bool)
    for i, s in enumerate(cat.test):
        if s.mask_path is not None:
            out[i] = preprocess.mask(load_mask(s.mask_path, image_size(s.path)))
    return out


# -- the run's shared state -------------------------------------------------------------------------------
@dataclass
class Setup:
    """What both phases use: one detector per coreset setting (the first is the primary), features, timers."""

    detectors: dict[str, Detector]
    features: FeatureSource
    timer: Timer
    new_detector: Callable[[DetectorConfig], Detector]
    calibration_ablation: bool = False
    threshold_calibrations: tuple[str, ...] = ()
    bootstrap_resamples: int = 2000
    category_timings: dict[str, dict] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return next(iter(self.detectors))

    @property
    def config(self) -> DetectorConfig:
        return self.detectors[self.primary].config


# -- phase A: fit -------------------------------------------------------------------------------------------
@dataclass
class FittedCategory:
    """A category after fitting: what the primary model calibrated on, the thresholds of every threshold
    calibration compared (by coreset setting, then method) and, for the calibration ablation, a model whose
    bank holds every train image (``reference``), the train images scored against it in-sample and
    leave-one-image-out, and a model with a held-out calibration split."""

    name: str
    calibration: CalibrationRecord
    thresholds: dict[str, dict[str, Thresholds]] = field(default_factory=dict)
    reference: Detector | None = None
    in_sample: ScoredImages | None = None
    leave_one_out: ScoredImages | None = None
    held_out: Detector | None = None


def fit_category(setup: Setup, cat: Category) -> FittedCategory:
    ct = setup.category_timings.setdefault(cat.name, {})
    primary = setup.detectors[setup.primary]
    t0 = time.perf_counter()
    feats = setup.features.features(cat.train, setup.config.blocks, primary.fuse, f"{cat.name}: train", train=True)
    ct["train_features_s"] = round(time.perf_counter() - t0, 3)
    names = [str(p) for p in cat.train]
    for key, det in setup.detectors.items():
        t0 = time.perf_counter()
        with setup.timer("fit", f"fit[{key}]"):
            model = det.fit_features(cat.name, feats, names)
        ct[f"fit_s[{key}]"] = round(time.perf_counter() - t0, 3)
        log(f"{cat.name}: fitted coreset {key}: bank {len(model.bank)} of {feats.shape[0] * feats.shape[1]} patches "
            f"({time.perf_counter() - t0:.1f} s), lambda {model.calibration.lam:.4g}")
    fitted = FittedCategory(cat.name, primary.categories_[cat.name].calibration_record)
    for key, det in setup.detectors.items():
        model, own = det.categories_[cat.name], det.config.threshold_calibration
        fitted.thresholds[key] = {}
        for method in setup.threshold_calibrations:
            with setup.timer(f"threshold_calibration[{method}]"):
                fitted.thresholds[key][method] = model.thresholds if method == own else det.calibrate_thresholds(
                    feats, det.memory_bank(cat.name), model.calibration, method)
    if setup.calibration_ablation:
        with setup.timer("ablations", "ablation:calibration"):
            cfg = setup.config

            def fit_new(calibration: str) -> Detector:
                det = setup.new_detector(replace(cfg, calibration=calibration))
                det.fit_features(cat.name, feats, names)
                return det

            ref = fit_new("in-sample") if cfg.calibration == "held-out" else primary
            bank = ref.memory_bank(cat.name)
            fitted.reference = ref
            fitted.in_sample, fitted.leave_one_out = ref.pipeline.run_in_sample_and_left_out(bank, feats, np.arange(len(feats)))
            fitted.held_out = primary if cfg.calibration == "held-out" else fit_new("held-out")
    return fitted


# -- phase B: evaluate -------------------------------------------------------------------------------------
@dataclass
class CategoryMetrics:
    """One category's entry in ``results[setting][ratio]["categories"]``."""

    image: dict
    pixel: dict | None
    routing_accuracy: float | None
    counts: dict[str, int | bool]
    bank_size: int
    lam: float
    thresholds: dict[str, float]
    routed_to: dict[str, int] | None = None
    decisions: dict[str, dict] | None = None  # by threshold calibration (class-separated only)
    pixel_threshold: dict[str, dict] | None = None  # by threshold calibration: the pixel threshold's F1 etc.
    pixel_full: dict | None = None
    statistics: dict | None = None

    def to_json(self) -> dict:
        out = {"image": self.image, "pixel": self.pixel, "routing_accuracy": self.routing_accuracy, **self.counts,
               "bank_size": self.bank_size, "lambda": self.lam, "thresholds": dict(self.thresholds)}
        if self.routed_to is not None:
            out["routed_to"] = self.routed_to
        else:  # class-separated
            out["pixel_full"] = self.pixel_full
            out["statistics"] = self.statistics
        if self.decisions is not None:
            out["decisions"] = self.decisions
        if self.pixel_threshold is not None:
            out["pixel_threshold"] = self.pixel_threshold
        return to_json(out)


@dataclass
class Routed:
    """Test images routed to a category each, with the maps and scores they got there."""

    routes: list[str]
    maps: np.ndarray
    scores: dict[str, np.ndarray]


@dataclass
class RatioEvaluation:
    """One category's test images at one coreset setting, in both settings."""

    separated: CategoryMetrics
    routed: CategoryMetrics
    scored: ScoredImages
    routing: Routed


@dataclass
class EvaluatedCategory:
    """A category's test results at every coreset setting; for the calibration ablation also its test
    images scored against the fitted category's ``reference`` and ``held_out`` models."""

    category: Category
    labels: np.ndarray
    masks: np.ndarray | None
    ratios: dict[str, RatioEvaluation]
    reference: ScoredImages | None = None
    held_out: ScoredImages | None = None


def route_and_score(det: Detector, name: str, feats: torch.Tensor, scored: ScoredImages) -> Routed:
    """Route every test image; those sent to another category are scored against that one."""
    routes = det.route(feats)
    wrong = [i for i, r in enumerate(routes) if r != name]
    maps = scored.maps.copy() if wrong else scored.maps
    scores = {s: np.array(v, dtype=np.float64, copy=True) for s, v in scored.scores.items()} if wrong else scored.scores
    for target in dict.fromkeys(routes[i] for i in wrong):
        rows = [i for i in wrong if routes[i] == target]
        other = det.score_features(target, feats[rows])
        maps[rows] = other.maps
        for s in SCORES:
            scores[s][rows] = other.scores[s]
    return Routed(routes, maps, scores)


def evaluate_category(setup: Setup, cat: Category, fitted: FittedCategory) -> EvaluatedCategory | None:
    """Score the test images at every coreset setting; None (and a log line) without test images."""
    ct = setup.category_timings[cat.name]
    if not cat.test:
        log(f"{cat.name}: no test images, skipped")
        return None
    cfg = setup.config
    labels = np.array([s.label for s in cat.test], dtype=np.int64)
    t0 = time.perf_counter()
    feats = setup.features.features([s.path for s in cat.test], cfg.blocks, setup.detectors[setup.primary].fuse,
                                    f"{cat.name}: test")
    ct["test_features_s"] = round(time.perf_counter() - t0, 3)
    masks = crop_masks(cat, cfg.preprocess)
    counts = dict(n_train=len(cat.train), n_test=len(cat.test), n_good=int((labels == 0).sum()),
                  n_defective=int((labels == 1).sum()), has_masks=cat.has_masks)
    out = EvaluatedCategory(cat, labels, masks, {})
    for key, det in setup.detectors.items():
        t0 = time.perf_counter()
        with setup.timer("scoring"):
            scored = det.score_features(cat.name, feats)
            routing = route_and_score(det, cat.name, feats, scored)
        ct[f"scoring_s[{key}]"] = round(time.perf_counter() - t0, 3)
        model = det.categories_[cat.name]
        common = dict(counts=counts, bank_size=len(model.bank), lam=model.calibration.lam,
                      thresholds={s: model.thresholds.values[s] for s in SCORES})
        t0 = time.perf_counter()
        with setup.timer("metrics"):
            image, pixel = image_metrics(labels, scored.scores), pixel_metrics(masks, scored.maps)
            decisions = {m: decision_counts(labels, scored.scores, t.values) for m, t in fitted.thresholds[key].items()}
            at_pixel = None if pixel is None else {
                m: pixel_decisions(masks, scored.maps, t.values[PIXEL]) for m, t in fitted.thresholds[key].items()}
            separated = CategoryMetrics(
                image, pixel, None, pixel_full=full_frame_pixel_metrics(cat, scored.maps, cfg.preprocess),
                statistics=image_statistics(labels, scored.scores, setup.bootstrap_resamples, det.config.seed),
                decisions=decisions or None, pixel_threshold=at_pixel, **common)
            if routing.scores is not scored.scores:
                image, pixel = image_metrics(labels, routing.scores), pixel_metrics(masks, routing.maps)
            routed = CategoryMetrics(image, pixel, float(np.mean([r == cat.name for r in routing.routes])),
                                     routed_to=dict(Counter(routing.routes)), **common)
        ct[f"metrics_s[{key}]"] = round(time.perf_counter() - t0, 3)
        out.ratios[key] = RatioEvaluation(separated, routed, scored, routing)
        im, px = separated.image, separated.pixel
        log(f"{cat.name} [{key}]: I-AUROC base {number_text(im['base']['auroc'])} struct {number_text(im['struct']['auroc'])} "
            f"hybrid {number_text(im['hybrid']['auroc'])}; P-AUROC {number_text(px and px['auroc'])} AUPRO {number_text(px and px['aupro'])}; "
            f"routing {routed.routing_accuracy:.3f}")
    if fitted.reference is not None:
        with setup.timer("ablations", "ablation:calibration"):
            primary = out.ratios[setup.primary].scored
            ref = fitted.reference
            out.reference = primary if ref is setup.detectors[setup.primary] else ref.score_features(cat.name, feats)
            out.held_out = fitted.held_out.score_features(cat.name, feats)
    return out


def number_text(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    """``v * scale`` with ``digits`` decimals; ``-`` for a missing value (console output)."""
    return "-" if v is None else f"{v * scale:.{digits}f}"
