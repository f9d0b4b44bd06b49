"""``structcore benchmark``: the paper's evaluation (Tables 2-3, 5-12) on MVTec AD, VisA or plain folders.

For every coreset ratio (``--coreset-ratios``, default the model's ``--coreset-ratio``) it runs two
settings on the same fitted models:

* ``class_separated``: the category of a test image is known; it is scored against that category.
* ``routed``: one detector holds every category; each test image is routed (paper eq. 3-4) and scored
  against the category it was routed to, whatever that is. Metrics are grouped by the true category.

Features come from :mod:`structcore.feature_cache` (raw block tokens on disk), so a second run, and every
ablation, costs only the fitting and scoring.

Output folder ``DIR``
---------------------
``results.json``::

    {
      "schema": 1, "dataset": "mvtec", "data_root": "...", "category_names": ["bottle", "screw"],
      "categories": {...}, "mean": {...},       # headline: results.class_separated[primary], with
                                                # routing_accuracy(+_overall) taken from the routed setting
      "config": {...DetectorConfig...},          # coreset_ratio is the first (primary) ratio
      "coreset_ratios": [0.01, 0.1], "primary": "0.01",
      "weights": {"name", "sha256", "source", "origin"}, "precision": "bf16", "fit_precision": "fp32",
      "device": "cpu",                          # backbone precision of the test images / of the train images
      "feature_cache": {"folder", "enabled", "hits", "misses", "extract_s", "load_s", "extractor_calls"},
      "results": {
        "<setting>": {                          # "class_separated" | "routed"
          "<ratio>": {                          # "0.01" (str(ratio)), or "size<N>" with --coreset-size
            "categories": {
              "<category>": {
                "image": {"base"|"struct"|"hybrid": {"auroc", "ap", "f1_max"}},
                "pixel": {"auroc", "ap", "f1_max", "aupro"} | null,   # null: category has no masks
                "routing_accuracy": float | null,  # null in class_separated (nothing is routed)
                "routed_to": {"<category>": count} (routed only),
                "n_train", "n_test", "n_good", "n_defective", "has_masks", "bank_size", "lambda",
                "thresholds": {"base", "struct", "hybrid"}
              }, ...
            },
            "mean": {"image": ..., "pixel": ... | null, "routing_accuracy": ...,
                     "routing_accuracy_overall": ... (routed only), "n_categories", "n_categories_pixel"}
          }
        }
      },
      "ablations": {"<name>": {"description", "coreset_ratio", "variants": {
                       "<label>": {"categories": {"<category>": {"base"|"struct"|"hybrid": {auroc, ap, f1_max},
                                                                 ["lambda"]}},
                                   "mean": {"base"|"struct"|"hybrid": {...}, "hybrid_auroc_std"}}}}},
      "timings": {"wall_s", "feature_extraction_s", "fit_s", "scoring_s", "metrics_s", "ablations_s",
                  "fit_s_by_ratio": {...}, "ablations": {"<name>": s}, "categories": {"<cat>": {...}}},
    }

All metric values are fractions in [0, 1]; a metric that cannot be computed is ``null`` (pixel metrics of
a category without masks, image metrics of a category whose test set lacks good or defective images).
Means are plain averages over the categories that have the value (``n_categories_pixel`` says how many
had pixel metrics); ``routing_accuracy`` in ``mean`` is the plain average over categories and
``routing_accuracy_overall`` the fraction of all test images routed correctly.

Ablations (computed for the class-separated setting at the primary ratio), names in ``ablations``:
``components`` (Tables 5/7), ``distances`` (Table 6), ``lambda``, ``layers`` (Table 12, plus
``--layer-sets``), ``coreset`` (from the main results), ``calibration`` (in-sample, leave-one-out,
held-out) and ``descriptor_on`` (phi on the final map vs the raw patch grid). Components, distances and
lambda reuse the train-good and test maps of the fitted model and only refit the StructCore statistics;
calibration and descriptor_on reuse the memory bank (held-out fits a bank on the reduced train set);
layers fit a new model per layer set.

Other files: ``tables/<setting>_coreset<pct>.{md,csv}`` (paper Tables 8-11 layout, percent, 1 decimal),
``tables/ablation_<name>.{md,csv}`` (percent, 2 decimals), ``tables.md`` (all tables),
``scores/<category>.json`` (image scores of the primary ratio: train-good calibration images and test
images, thresholds, lambda, labels, paths, defect types, routing) and ``maps/<category>.npz`` (anomaly
maps, crop-frame masks and cropped RGB images of up to 8 test images, a deterministic mix of good and
defective ones). When :mod:`structcore.report` exists, ``report.write_report(DIR)`` is called last.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .backbones import load_backbone
from .data import Category, load_folder, load_mvtec, load_visa
from .errors import DataError
from .features import Preprocess
from .images import image_size, load_image, load_mask
from .config import DetectorConfig
from .detector import FIT_PRECISION, Detector
from .scoring import ScoredImages
from .feature_cache import CacheContext, FeatureCache, default_folder
from .features import FeatureExtractor, resolve_precision
from .structure import COMPONENTS, DISTANCES, StructCalibration, descriptor

SCHEMA = 1
SCORES = ("base", "struct", "hybrid")
IMAGE_KEYS = ("auroc", "ap", "f1_max")
PIXEL_KEYS = ("auroc", "ap", "f1_max", "aupro")
SETTINGS = ("class_separated", "routed")
DEFAULT_LAMBDAS = (0.05, 0.1, 0.15, 0.2)
COMPONENT_SUBSETS = (
    ("std",),
    ("topk",),
    ("tv",),
    ("std", "topk"),
    ("std", "tv"),
    ("topk", "tv"),
    ("std", "topk", "tv"),
)
COMPONENT_NAMES = {"std": "sigma_S", "topk": "top1%", "tv": "TV"}


# -- options --------------------------------------------------------------------------------------
@dataclass
class Ablations:
    """Which ablations to run. ``lambdas`` empty: no lambda ablation."""

    components: bool = False
    distances: bool = False
    lambdas: tuple[float, ...] = ()
    layers: bool = False
    layer_sets: tuple[tuple[int, ...], ...] = ()
    calibration: bool = False
    descriptor_on: bool = False

    @property
    def needs_train_phi(self) -> bool:
        return self.components or self.distances or bool(self.lambdas)

    @property
    def any(self) -> bool:
        return self.needs_train_phi or self.layers or bool(self.layer_sets) or self.calibration or self.descriptor_on


def _pct(ratio_label: str) -> str:
    if ratio_label.startswith("size"):
        return ratio_label
    v = float(ratio_label) * 100
    return f"coreset{v:g}"


# -- timing ----------------------------------------------------------------------------------------
class Timer:
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


def _log(msg: str):
    print(msg, flush=True)


# -- metrics helpers -----------------------------------------------------------------------------------
def _clean(v):
    """JSON-safe: numpy scalars to float, NaN/inf to None, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    return v


def _image_metrics(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    from .metrics import image_metrics

    if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:  # one class only
        return {s: {k: None for k in IMAGE_KEYS} for s in scores}
    return {s: {k: _clean(image_metrics(labels, np.asarray(v, np.float64))[k]) for k in IMAGE_KEYS} for s, v in scores.items()}


def _pixel_metrics(masks: np.ndarray | None, maps: np.ndarray) -> dict | None:
    from .metrics import pixel_metrics

    if masks is None or not masks.any() or masks.all():
        return None
    m = pixel_metrics(masks, maps)
    return {k: _clean(m[k]) for k in PIXEL_KEYS}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _mean_of(rows: list[dict]) -> dict:
    """Plain average over categories of every leaf of the per-category result dicts."""
    out: dict = {"image": {}, "n_categories": len(rows)}
    for s in SCORES:
        out["image"][s] = {k: _mean([r["image"][s][k] for r in rows]) for k in IMAGE_KEYS}
    pix = [r["pixel"] for r in rows if r.get("pixel") is not None]
    out["pixel"] = {k: _mean([p[k] for p in pix]) for k in PIXEL_KEYS} if pix else None
    out["n_categories_pixel"] = len(pix)
    out["routing_accuracy"] = _mean([r.get("routing_accuracy") for r in rows])
    return out


# -- calibration from descriptors ------------------------------------------------------------------
def calibrate_from_phi(
    phi_train: np.ndarray,
    base_train: np.ndarray,
    components: tuple[str, ...],
    top_ratio: float,
    distance: str,
    lam: float | None,
    quantile: float,
) -> StructCalibration:
    """:meth:`StructCalibration.fit` from precomputed descriptors (columns already selected)."""
    return StructCalibration.fit(phi_train, base_train, components, top_ratio, distance, lam, quantile)


def _scores_from_phi(cal: StructCalibration, phi: np.ndarray, base: np.ndarray) -> dict[str, np.ndarray]:
    return cal.scores_from_descriptors(phi, base)


def _cols(components: tuple[str, ...]) -> list[int]:
    return [COMPONENTS.index(c) for c in components]


# -- train-good maps through the detector (one place) ---------------------------------------------------
@dataclass
class CalibrationMaps:
    """The train-good images StructCore was calibrated on, with their maps' descriptors and scores."""

    ids: np.ndarray
    base: np.ndarray
    scores: dict[str, np.ndarray]
    phi_map: np.ndarray  # descriptor (all COMPONENTS) of the final maps
    phi_grid: np.ndarray  # descriptor (all COMPONENTS) of the raw patch grids


def calibration_maps(
    det: Detector, category: str, features: torch.Tensor, mode: str | None = None, chunk: int = 64
) -> CalibrationMaps:
    """What :meth:`Detector.fit_features` calibrated on (``mode`` defaults to the config's).

    ``mode`` "in-sample" or "leave-one-out" assume the bank was built from every train image.
    """
    cfg = det.config
    mode = mode or cfg.calibration
    record = det.categories_[category].calibration_record
    if mode == cfg.calibration and record is not None:
        return CalibrationMaps(ids=record.ids, base=record.base, scores=record.scores, phi_map=record.phi_map,
                               phi_grid=record.phi_grid)
    calib_ids = np.arange(len(features))
    exclude = calib_ids if mode == "leave-one-out" else None
    s = det.pipeline.run(det.memory_bank(category), features[calib_ids], exclude_images=exclude, keep_maps=False, chunk=chunk)
    return CalibrationMaps(ids=calib_ids, base=s.base, scores={}, phi_map=s.phi_map, phi_grid=s.phi_grid)


def patch_grids_of(det: Detector, category: str, features: torch.Tensor) -> np.ndarray:
    """Raw kNN patch grids ``[B, rows, cols]`` of test features (what score_features upsamples)."""
    return det.pipeline.grids(det.memory_bank(category), features).numpy()


# -- data -----------------------------------------------------------------------------------------------
def load_categories(dataset: str = "mvtec", data=None, categories=None, split_csv=None, good=None,
                    defective=None, test_good=None, masks=None, name: str = "folder") -> list[Category]:
    """The categories of an MVTec AD / VisA root (``data``) or of a plain-folder data set (``good`` ...)."""
    if dataset == "folder":
        if not good:
            raise DataError("--dataset folder needs --good FOLDER (and --defective, --test-good, --masks)")
        return [load_folder(good, defective, test_good, masks, name)]
    if not data:
        raise DataError(f"--dataset {dataset} needs --data ROOT")
    if dataset == "visa":
        return load_visa(Path(data), categories, split_csv)
    return load_mvtec(Path(data), categories)


def _crop_masks(cat: Category, resize: int, crop: int) -> np.ndarray | None:
    if not cat.has_masks:
        return None
    out = np.zeros((len(cat.test), crop, crop), dtype=bool)
    for i, s in enumerate(cat.test):
        if s.mask_path is not None:
            out[i] = Preprocess(resize=resize, crop=crop).mask(load_mask(s.mask_path, image_size(s.path)))
    return out


def pick_examples(cat: Category, limit: int = 8) -> list[int]:
    """Deterministic mix of test images for qualitative panels: 2 good ones, then defects round-robin over
    defect types (sorted), then fill with whatever is left."""
    goods = [i for i, s in enumerate(cat.test) if s.label == 0]
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(cat.test):
        if s.label == 1:
            by_type.setdefault(s.defect, []).append(i)
    chosen: list[int] = []
    n_good = min(len(goods), 2 if by_type else limit)
    if n_good:
        step = len(goods) / n_good
        chosen += [goods[int(j * step)] for j in range(n_good)]
    queues = [by_type[t] for t in sorted(by_type)]
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    for i in goods:
        if len(chosen) >= limit:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


# -- the run --------------------------------------------------------------------------------------------
class _Run:
    def __init__(
        self,
        categories: list[Category],
        out: Path,
        config: DetectorConfig,
        coreset_ratios,
        weights,
        precision,
        device,
        batch_size,
        num_workers,
        progress,
        feature_cache,
        ablations,
        backbone,
        max_maps,
        dataset,
        data_root,
        write_report=True,
        compile=False,
        fit_precision=None,
    ):
        self.write_report = write_report
        self.cats = categories
        self.out = out
        self.config = config
        self.progress = progress
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.ablations = ablations or Ablations()
        self.max_maps = max_maps
        self.dataset = dataset
        self.data_root = data_root
        self.timer = Timer()
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.precision = resolve_precision(precision, self.device)
        self.fit_precision = resolve_precision(fit_precision or FIT_PRECISION, self.device)
        if backbone is None:
            backbone = load_backbone(config.backbone, weights)
        self.backbone, self.weights_info = backbone
        # (extractor, cache context) per backbone precision: train images in fit_precision, test images in precision
        self.extractors = {
            p: (
                FeatureExtractor(self.backbone, config.blocks, None, p, self.device, compile),
                CacheContext(config.backbone, self.weights_info.sha256, config.preprocess, p, self.device.type),
            )
            for p in dict.fromkeys((self.fit_precision, self.precision))
        }
        folder = default_folder() if isinstance(feature_cache, str) and feature_cache == "default" else feature_cache
        self.cache = FeatureCache(folder)
        self.runtime = dict(
            weights=weights, precision=self.precision, fit_precision=self.fit_precision, device=str(self.device),
            batch_size=batch_size, num_workers=num_workers, progress=progress,
        )
        if config.coreset_size is not None:
            self.settings = {f"size{config.coreset_size}": config}
        else:
            ratios = list(coreset_ratios) if coreset_ratios else [config.coreset_ratio]
            self.settings = {str(float(r)): replace(config, coreset_ratio=float(r), coreset_size=None) for r in ratios}
        self.primary = next(iter(self.settings))
        self.dets = {k: Detector(c, **self.runtime) for k, c in self.settings.items()}
        self.results = {s: {k: {"categories": {}} for k in self.settings} for s in SETTINGS}
        self.ablation_data: dict[str, dict] = {}
        self.cat_timings: dict[str, dict] = {}

    # features -------------------------------------------------------------------------------------
    def features(self, paths, blocks, det: Detector, desc: str, train: bool = False) -> torch.Tensor:
        """Fused features of ``paths``; train images go through the backbone in ``fit_precision``."""
        extractor, context = self.extractors[self.fit_precision if train else self.precision]
        with self.timer("feature_extraction"):
            return self.cache.layer_tokens(
                extractor, context, paths, blocks, self.batch_size, self.num_workers, self.progress, desc,
                reduce=det.fuse,
            )

    # main --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t_wall = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "scores").mkdir(exist_ok=True)
        (self.out / "maps").mkdir(exist_ok=True)
        _log(
            f"benchmark: {len(self.cats)} categor{'y' if len(self.cats) == 1 else 'ies'}, coreset "
            f"{', '.join(self.settings)}, {self.config.backbone} ({self.weights_info.source}), {self.fit_precision} fit, "
            f"{self.precision} test on "
            f"{self.device}, feature cache {self.cache.folder or 'off'}"
        )
        train_info = {}
        for cat in self.cats:
            train_info[cat.name] = self.fit_category(cat)
        for cat in self.cats:
            self.evaluate_category(cat, train_info.pop(cat.name))
        for key in self.settings:
            for setting in SETTINGS:
                block = self.results[setting][key]
                block["mean"] = _mean_of(list(block["categories"].values()))
                if setting == "class_separated":
                    block["mean"]["routing_accuracy"] = None
            r = self.results["routed"][key]
            total = sum(c["n_test"] for c in r["categories"].values())
            right = sum(c["routed_to"].get(name, 0) for name, c in r["categories"].items())
            r["mean"]["routing_accuracy_overall"] = right / total if total else None
        ablations = {}
        if self.ablations.any or len(self.settings) > 1:  # several ratios: the coreset table
            with self.timer("ablations"):
                ablations = self.finish_ablations()
        timings = self.timings(time.perf_counter() - t_wall)
        headline = _headline(self.results, self.primary)
        results = {
            "schema": SCHEMA,
            "dataset": self.dataset,
            "data_root": None if self.data_root is None else str(self.data_root),
            "category_names": [c.name for c in self.cats],
            "categories": headline["categories"],
            "mean": headline["mean"],
            "config": asdict(self.settings[self.primary]),
            "coreset_ratios": [self.settings[k].coreset_ratio for k in self.settings],
            "primary": self.primary,
            "weights": {
                "name": self.weights_info.name,
                "sha256": self.weights_info.sha256,
                "source": self.weights_info.source,
                "origin": getattr(self.weights_info, "origin", ""),
            },
            "precision": self.precision,
            "fit_precision": self.fit_precision,
            "device": str(self.device),
            "feature_cache": {"folder": None if self.cache.folder is None else str(self.cache.folder),
                              "enabled": self.cache.enabled, **self.cache.stats.as_dict()},
            "results": self.results,
            "ablations": ablations,
            "timings": timings,
        }
        results = _clean(results)
        _write_json(self.out / "results.json", results)
        write_tables(self.out, results)
        print(summary_text(results), flush=True)
        if self.write_report:
            _maybe_report(self.out)
        return results

    def timings(self, wall: float) -> dict:
        t = self.timer
        return {
            "wall_s": round(wall, 3),
            "feature_extraction_s": t.get("feature_extraction"),
            "backbone_s": round(self.cache.stats.extract_s, 3),
            "cache_read_s": round(self.cache.stats.load_s, 3),
            "fit_s": t.get("fit"),
            "fit_s_by_ratio": {k: t.get(f"fit[{k}]") for k in self.settings},
            "scoring_s": t.get("scoring"),
            "metrics_s": t.get("metrics"),
            "ablations_s": t.get("ablations"),
            "ablations": {n: t.get(f"ablation:{n}") for n in (
                "components", "distances", "lambda", "layers", "coreset", "calibration", "descriptor_on"
            ) if f"ablation:{n}" in t.totals},
            "categories": self.cat_timings,
        }

    # phase A: fit ---------------------------------------------------------------------------------------
    def fit_category(self, cat: Category) -> dict:
        ab = self.ablations
        ct = self.cat_timings.setdefault(cat.name, {})
        t0 = time.perf_counter()
        feats = self.features(cat.train, self.config.blocks, self.dets[self.primary], f"{cat.name}: train", train=True)
        ct["train_features_s"] = round(time.perf_counter() - t0, 3)
        names = [str(p) for p in cat.train]
        for key, det in self.dets.items():
            t0 = time.perf_counter()
            with self.timer("fit", f"fit[{key}]"):
                model = det.fit_features(cat.name, feats, names)
            ct[f"fit_s[{key}]"] = round(time.perf_counter() - t0, 3)
            _log(f"{cat.name}: fitted coreset {key}: bank {len(model.bank)} of {feats.shape[0] * feats.shape[1]} patches "
                 f"({time.perf_counter() - t0:.1f} s), lambda {model.calibration.lam:.4g}")
        det = self.dets[self.primary]
        info: dict = {}
        with self.timer("scoring"):
            info["calib"] = calibration_maps(det, cat.name, feats)
        if ab.calibration or ab.descriptor_on:
            with self.timer("ablations", "ablation:calibration" if ab.calibration else "ablation:descriptor_on"):
                cfg = det.config
                if cfg.calibration == "held-out":
                    det_all = Detector(replace(cfg, calibration="in-sample"), **{**self.runtime, "progress": False})
                    det_all.fit_features(cat.name, feats, names)
                else:
                    det_all = det
                info["det_all"] = det_all
                if ab.calibration:
                    info["phi_in"] = calibration_maps(det_all, cat.name, feats, "in-sample")
                    info["phi_loo"] = calibration_maps(det_all, cat.name, feats, "leave-one-out")
                    if cfg.calibration == "held-out":
                        det_ho = det
                    else:
                        det_ho = Detector(replace(cfg, calibration="held-out"), **{**self.runtime, "progress": False})
                        det_ho.fit_features(cat.name, feats, names)
                    info["det_ho"] = det_ho
        del feats
        return info

    # phase B: evaluate ------------------------------------------------------------------------------------
    def evaluate_category(self, cat: Category, info: dict):
        cfg = self.config
        ct = self.cat_timings[cat.name]
        if not cat.test:
            _log(f"{cat.name}: no test images, skipped")
            return
        paths = [s.path for s in cat.test]
        labels = np.array([s.label for s in cat.test], dtype=np.int64)
        t0 = time.perf_counter()
        feats = self.features(paths, cfg.blocks, self.dets[self.primary], f"{cat.name}: test")
        ct["test_features_s"] = round(time.perf_counter() - t0, 3)
        masks = _crop_masks(cat, cfg.resize, cfg.crop)
        counts = dict(n_train=len(cat.train), n_test=len(cat.test), n_good=int((labels == 0).sum()),
                      n_defective=int((labels == 1).sum()), has_masks=cat.has_masks)
        for key, det in self.dets.items():
            t0 = time.perf_counter()
            with self.timer("scoring"):
                sc = det.score_features(cat.name, feats)
                routes = det.route(feats)
                routed = self._routed_scores(det, cat.name, feats, sc, routes)
            ct[f"scoring_s[{key}]"] = round(time.perf_counter() - t0, 3)
            model = det.categories_[cat.name]
            common = dict(counts, bank_size=len(model.bank), **{"lambda": model.calibration.lam},
                          thresholds=dict(model.calibration.thresholds))
            t0 = time.perf_counter()
            with self.timer("metrics"):
                sep = {"image": _image_metrics(labels, sc.scores), "pixel": _pixel_metrics(masks, sc.maps),
                       "routing_accuracy": None, **common}
                if routed is sc:
                    rout = {**sep}
                else:
                    rout = {"image": _image_metrics(labels, routed.scores), "pixel": _pixel_metrics(masks, routed.maps), **common}
                rout["routing_accuracy"] = float(np.mean([r == cat.name for r in routes]))
                rout["routed_to"] = dict(Counter(routes))
            ct[f"metrics_s[{key}]"] = round(time.perf_counter() - t0, 3)
            self.results["class_separated"][key]["categories"][cat.name] = sep
            self.results["routed"][key]["categories"][cat.name] = rout
            im, px = sep["image"], sep["pixel"]
            _log(
                f"{cat.name} [{key}]: I-AUROC base {_f(im['base']['auroc'])} struct {_f(im['struct']['auroc'])} "
                f"hybrid {_f(im['hybrid']['auroc'])}; P-AUROC {_f(px and px['auroc'])} AUPRO {_f(px and px['aupro'])}; "
                f"routing {rout['routing_accuracy']:.3f}"
            )
            if key == self.primary:
                self._write_scores(cat, det, info["calib"], sc, routed, routes, labels)
                self._write_maps(cat, det, sc, masks)
                if self.ablations.any:
                    with self.timer("ablations"):
                        self._category_ablations(cat, det, info, feats, sc, labels)

    def _routed_scores(self, det, name, feats, sc: ScoredImages, routes: list[str]) -> ScoredImages:
        wrong = [i for i, r in enumerate(routes) if r != name]
        if not wrong:
            return sc
        maps = sc.maps.copy()
        scores = {s: np.array(v, dtype=np.float64, copy=True) for s, v in sc.scores.items()}
        for target in dict.fromkeys(routes[i] for i in wrong):
            rows = [i for i in wrong if routes[i] == target]
            other = det.score_features(target, feats[rows])
            maps[rows] = other.maps
            for s in SCORES:
                scores[s][rows] = other.scores[s]
        return replace(sc, maps=maps, scores=scores)

    # files for the figures --------------------------------------------------------------------------------
    def _write_scores(self, cat, det, calib: CalibrationMaps, sc, routed, routes, labels):
        model = det.categories_[cat.name]
        doc = {
            "category": cat.name,
            "coreset_ratio": det.config.coreset_ratio,
            "calibration": det.config.calibration,
            "quantile": det.config.quantile,
            "lambda": model.calibration.lam,
            "thresholds": dict(model.calibration.thresholds),
            "train": {
                "paths": [str(cat.train[i]) for i in calib.ids],
                **{s: calib.scores[s] for s in SCORES},
            },
            "test": {
                "paths": [str(s.path) for s in cat.test],
                "labels": labels,
                "defect_types": [s.defect for s in cat.test],
                **{s: sc.scores[s] for s in SCORES},
                "routed_to": routes,
                "routed": {s: routed.scores[s] for s in SCORES},
            },
        }
        _write_json(self.out / "scores" / f"{cat.name}.json", _clean(doc))

    def _write_maps(self, cat, det, sc, masks):
        chosen = pick_examples(cat, self.max_maps)
        if not chosen:
            return
        pre = det.config.preprocess
        images = np.stack([np.asarray(pre.view(load_image(cat.test[i].path))) for i in chosen])
        thresholds = det.categories_[cat.name].calibration.thresholds
        np.savez_compressed(
            self.out / "maps" / f"{cat.name}.npz",
            maps=sc.maps[chosen].astype(np.float32),
            masks=masks[chosen] if masks is not None else np.zeros((len(chosen), *sc.maps.shape[1:]), bool),
            has_masks=np.array(cat.has_masks),
            has_mask=np.full(len(chosen), cat.has_masks),
            images=images.astype(np.uint8),
            paths=np.array([str(cat.test[i].path) for i in chosen]),
            labels=np.array([cat.test[i].label for i in chosen], dtype=np.int64),
            defect_types=np.array([cat.test[i].defect for i in chosen]),
            indices=np.array(chosen, dtype=np.int64),
            **{s: np.asarray(sc.scores[s])[chosen].astype(np.float64) for s in SCORES},
            **{f"threshold_{s}": np.array(thresholds[s]) for s in SCORES},
        )

    # ablations ---------------------------------------------------------------------------------------------
    def _put(self, name: str, label: str, category: str, scores: dict, labels, extra: dict | None = None):
        entry = self.ablation_data.setdefault(name, {}).setdefault(label, {})
        entry[category] = {**_image_metrics(labels, scores), **(extra or {})}

    def _category_ablations(self, cat, det, info, feats, sc: ScoredImages, labels):
        ab, cfg = self.ablations, det.config
        calib: CalibrationMaps = info["calib"]
        base_te = np.asarray(sc.scores["base"], np.float64)
        phi_te = descriptor(sc.maps, COMPONENTS, cfg.top_ratio)
        grid_te = None
        if cfg.descriptor_on == "grid" or ab.descriptor_on:
            grid_te = descriptor(patch_grids_of(det, cat.name, feats), COMPONENTS, cfg.top_ratio)
        phi_tr = calib.phi_map if cfg.descriptor_on == "map" else calib.phi_grid
        phi_te_main = phi_te if cfg.descriptor_on == "map" else grid_te

        def fit_eval(phi_train, base_train, phi_test, base_test, components, distance, lam):
            cols = _cols(components)
            cal = calibrate_from_phi(phi_train[:, cols], base_train, components, cfg.top_ratio, distance, lam, cfg.quantile)
            return cal, _scores_from_phi(cal, phi_test[:, cols], base_test)

        if ab.components:
            with self.timer("ablation:components"):
                for comps in COMPONENT_SUBSETS:
                    _, s = fit_eval(phi_tr, calib.base, phi_te_main, base_te, comps, cfg.distance, cfg.lam)
                    self._put("components", "+".join(comps), cat.name, s, labels)
        if ab.distances:
            with self.timer("ablation:distances"):
                for dist in DISTANCES:
                    _, s = fit_eval(phi_tr, calib.base, phi_te_main, base_te, cfg.components, dist, cfg.lam)
                    self._put("distances", dist, cat.name, s, labels)
        if ab.lambdas:
            with self.timer("ablation:lambda"):
                for lam in (None, *ab.lambdas):
                    cal, s = fit_eval(phi_tr, calib.base, phi_te_main, base_te, cfg.components, cfg.distance, lam)
                    self._put("lambda", "auto" if lam is None else f"{lam:g}", cat.name, s, labels, {"lambda": cal.lam})
        if ab.calibration:
            with self.timer("ablation:calibration"):
                det_all = info["det_all"]
                if det_all is det:
                    phi_all_te, base_all_te = phi_te, base_te
                else:
                    other = det_all.score_features(cat.name, feats)
                    phi_all_te, base_all_te = descriptor(other.maps, COMPONENTS, cfg.top_ratio), other.scores["base"]
                if cfg.descriptor_on == "grid":
                    phi_all_te = descriptor(patch_grids_of(det_all, cat.name, feats), COMPONENTS, cfg.top_ratio)
                col = "phi_map" if cfg.descriptor_on == "map" else "phi_grid"
                for mode, key in (("in-sample", "phi_in"), ("leave-one-out", "phi_loo")):
                    cm: CalibrationMaps = info[key]
                    cal, s = fit_eval(getattr(cm, col), cm.base, phi_all_te, base_all_te, cfg.components, cfg.distance, cfg.lam)
                    self._put("calibration", mode, cat.name, s, labels, {"lambda": cal.lam})
                det_ho = info["det_ho"]
                ho = det_ho.score_features(cat.name, feats)
                self._put("calibration", "held-out", cat.name, ho.scores, labels,
                          {"lambda": det_ho.categories_[cat.name].calibration.lam})
        if ab.descriptor_on:
            with self.timer("ablation:descriptor_on"):
                for where, ptr, pte in (("map", calib.phi_map, phi_te), ("grid", calib.phi_grid, grid_te)):
                    cal, s = fit_eval(ptr, calib.base, pte, base_te, cfg.components, cfg.distance, cfg.lam)
                    self._put("descriptor_on", where, cat.name, s, labels, {"lambda": cal.lam})

    def _layer_ablation(self):
        ab, cfg = self.ablations, self.settings[self.primary]
        depth = self.backbone.cfg.depth
        sets: list[tuple[int, ...]] = []
        if ab.layers:
            sets += [(-b,) for b in range(1, min(12, depth) + 1)]
        sets += [tuple(s) for s in ab.layer_sets if tuple(s) not in sets]
        if not sets:
            return
        union = sorted({b % depth for s in (*sets, cfg.blocks) for b in s})
        union_neg = [b - depth for b in union]
        if self.cache.enabled:
            # one forward pass per image fills the cache for every block of every layer set
            train = [p for c in self.cats for p in c.train]
            test = [s.path for c in self.cats for s in c.test]
            for precision, paths in ((self.fit_precision, train), (self.precision, test)):
                extractor, context = self.extractors[precision]
                with self.timer("feature_extraction"):
                    self.cache.layer_tokens(
                        extractor, context, paths, union_neg, self.batch_size, self.num_workers, self.progress,
                        f"layer sweep: blocks ({precision})", reduce=lambda layers: torch.empty(len(layers[0]), 0),
                    )
        for blocks in sets:
            label = ",".join(str(b) for b in blocks)
            det = Detector(replace(cfg, blocks=blocks), **{**self.runtime, "progress": False})
            t0 = time.perf_counter()
            for cat in self.cats:
                if not cat.test:
                    continue
                train = self.features(cat.train, blocks, det, f"{cat.name}: train [{label}]", train=True)
                det.fit_features(cat.name, train, [str(p) for p in cat.train])
                del train
                test = self.features([s.path for s in cat.test], blocks, det, f"{cat.name}: test [{label}]")
                sc = det.score_features(cat.name, test)
                labels = np.array([s.label for s in cat.test])
                self._put("layers", label, cat.name, sc.scores, labels)
            _log(f"layer set {label}: {time.perf_counter() - t0:.1f} s")

    def finish_ablations(self) -> dict:
        ab = self.ablations
        if ab.layers or ab.layer_sets:
            with self.timer("ablation:layers"):
                self._layer_ablation()
        out: dict = {}
        primary_ratio = self.settings[self.primary].coreset_ratio
        descriptions = {
            "components": "hybrid score with a subset of phi(S) = [std, top-r mean, TV] (paper Tables 5 and 7)",
            "distances": "structural distance D_struct (paper Table 6)",
            "lambda": "fixed hybrid weight lambda vs lambda_auto (paper Section 4.3)",
            "layers": "single ViT blocks and chosen block sets (paper Table 12); a new model per set",
            "calibration": "train-good maps for StructCore's statistics: in-sample, leave-one-image-out, held-out split",
            "descriptor_on": "phi computed on the final (upsampled, blurred) map or on the raw patch-score grid",
        }
        for name, variants in self.ablation_data.items():
            block = {"description": descriptions[name], "coreset_ratio": primary_ratio, "variants": {}}
            for label, cats in variants.items():
                rows = list(cats.values())
                mean = {s: {k: _mean([r[s][k] for r in rows]) for k in IMAGE_KEYS} for s in SCORES}
                h = [r["hybrid"]["auroc"] for r in rows if r["hybrid"]["auroc"] is not None]
                mean["hybrid_auroc_std"] = float(np.std(h)) if h else None
                if any("lambda" in r for r in rows):
                    mean["lambda"] = _mean([r.get("lambda") for r in rows])
                block["variants"][label] = {"categories": cats, "mean": mean}
            out[name] = block
        if len(self.settings) > 1 or ab.any:
            with self.timer("ablation:coreset"):
                out["coreset"] = self._coreset_summary()
        order = ["components", "distances", "lambda", "layers", "coreset", "calibration", "descriptor_on"]
        return {k: out[k] for k in order if k in out}

    def _coreset_summary(self) -> dict:
        block = {"description": "memory-bank size: the main results at each coreset ratio (class-separated)",
                 "variants": {}}
        for key, cfg in self.settings.items():
            res = self.results["class_separated"][key]
            cats = {}
            for name, r in res["categories"].items():
                cats[name] = {**{s: r["image"][s] for s in SCORES}, "pixel": r["pixel"], "bank_size": r["bank_size"]}
            mean = {**{s: res["mean"]["image"][s] for s in SCORES}, "pixel": res["mean"]["pixel"]}
            h = [c["hybrid"]["auroc"] for c in cats.values() if c["hybrid"]["auroc"] is not None]
            mean["hybrid_auroc_std"] = float(np.std(h)) if h else None
            mean["fit_s"] = self.timer.get(f"fit[{key}]")
            block["variants"][key] = {"coreset_ratio": cfg.coreset_ratio, "categories": cats, "mean": mean}
        return block


def _headline(results: dict, primary: str) -> dict:
    """Class-separated results at the primary ratio, with each category's routing accuracy added."""
    sep, rout = results["class_separated"][primary], results["routed"][primary]
    cats = {n: {**c, "routing_accuracy": rout["categories"][n]["routing_accuracy"]} for n, c in sep["categories"].items()}
    mean = {**sep["mean"], "routing_accuracy": rout["mean"]["routing_accuracy"],
            "routing_accuracy_overall": rout["mean"].get("routing_accuracy_overall")}
    return {"categories": cats, "mean": mean}


def _f(v, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _write_json(path: Path, obj):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _maybe_report(out: Path):
    try:
        report = importlib.import_module("structcore.report")
    except ModuleNotFoundError as e:
        if e.name != "structcore.report":
            raise
        return
    try:
        path = report.write_report(out)
    except Exception as e:  # the results are written; a broken figure must not lose them
        print(f"structcore: warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)
        return
    _log(f"report: {path}")


# -- public API ---------------------------------------------------------------------------------------------
def run_benchmark(
    categories: list[Category],
    out: str | Path,
    config: DetectorConfig | None = None,
    coreset_ratios: list[float] | None = None,
    *,
    weights: str | Path | None = None,
    precision: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    num_workers: int = 2,
    progress: bool = True,
    feature_cache: str | Path | None = "default",
    ablations: Ablations | None = None,
    backbone=None,
    max_maps: int = 8,
    dataset: str = "custom",
    data_root: str | Path | None = None,
    write_report: bool = True,
    compile: bool = False,
    fit_precision: str | None = None,
) -> dict:
    """Run the benchmark on loaded categories and write everything under ``out``; returns results.json's dict.

    ``feature_cache``: a folder, ``"default"`` (``<structcore cache>/features``) or ``None`` (no cache).
    ``backbone``: ``(VisionTransformer, WeightsInfo)`` to use instead of loading ``config.backbone``.
    ``write_report``: call ``structcore.report.write_report(out)`` at the end when that module exists.
    """
    if not categories:
        raise DataError("no categories to benchmark")
    run = _Run(
        categories, Path(out), config or DetectorConfig(), coreset_ratios, weights, precision, device, batch_size,
        num_workers, progress, feature_cache, ablations, backbone, max_maps, dataset, data_root, write_report,
        compile, fit_precision,
    )
    return run.run()


# -- tables -------------------------------------------------------------------------------------------------
def _cell(v, digits: int = 1) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(c if c != "" else "–" for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_table(folder: Path, stem: str, title: str, header: list[str], rows: list[list[str]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    text = f"### {title}\n\n" + _md(header, rows)
    (folder / f"{stem}.md").write_text(text)
    return text


def main_table(block: dict, routed: bool) -> tuple[list[str], list[list[str]]]:
    """Paper Tables 8-11: base / struct / hybrid (AUROC, AP, F1-max), then pixel metrics once."""
    header = ["Category"]
    for s, title in (("base", "Base"), ("struct", "Struct"), ("hybrid", "Hybrid")):
        header += [f"{title} AUROC", f"{title} AP", f"{title} F1-max"]
    header += ["P-AUROC", "P-AP", "P-F1-max", "AUPRO"]
    if routed:
        header.append("Routing acc.")
    rows = []
    for name, r in [*block["categories"].items(), ("Mean", block["mean"])]:
        row = [name]
        for s in SCORES:
            row += [_cell(r["image"][s][k]) for k in IMAGE_KEYS]
        px = r["pixel"]
        row += [_cell(px[k]) if px else "" for k in PIXEL_KEYS]
        if routed:
            row.append(_cell(r.get("routing_accuracy")))
        rows.append(row)
    return header, rows


def write_tables(out: Path, results: dict) -> None:
    folder = out / "tables"
    texts = []
    for setting in SETTINGS:
        for key, block in results["results"][setting].items():
            header, rows = main_table(block, setting == "routed")
            stem = f"{setting}_{_pct(key)}"
            title = f"{setting.replace('_', '-')}, coreset {key} (%; image: base/struct/hybrid, pixel once)"
            texts.append(_write_table(folder, stem, title, header, rows))
    for name, ab in results.get("ablations", {}).items():
        header, rows = ablation_table(name, ab, results["category_names"])
        texts.append(_write_table(folder, f"ablation_{name}", f"ablation: {name} - {ab['description']} (%)", header, rows))
        if name == "components":
            h2, r2 = components_per_category(ab, results["category_names"])
            texts.append(_write_table(folder, "ablation_components_per_category",
                                      "ablation: components per category (hybrid I-AUROC, %; paper Table 7)", h2, r2))
    (out / "tables.md").write_text("\n".join(texts))


def ablation_table(name: str, ab: dict, categories: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows = variants; columns = hybrid I-AUROC per category, then means (2 decimals)."""
    if name == "coreset":
        header = ["Coreset", *[f"{c} bank" for c in categories], "Base AUROC", "Struct AUROC", "Hybrid AUROC",
                  "P-AUROC", "AUPRO", "Fit s"]
        rows = []
        for key, v in ab["variants"].items():
            m = v["mean"]
            rows.append([key, *[str(v["categories"].get(c, {}).get("bank_size", "")) for c in categories],
                         _cell(m["base"]["auroc"], 2), _cell(m["struct"]["auroc"], 2), _cell(m["hybrid"]["auroc"], 2),
                         _cell(m["pixel"]["auroc"], 2) if m["pixel"] else "", _cell(m["pixel"]["aupro"], 2) if m["pixel"] else "",
                         f"{m['fit_s']:.1f}" if m.get("fit_s") is not None else ""])
        return header, rows
    first = {"components": "phi(S)", "distances": "Distance", "lambda": "lambda", "layers": "Blocks",
             "calibration": "Calibration", "descriptor_on": "phi on"}.get(name, "Variant")
    header = [first, *categories, "Mean hybrid", "Std", "Mean struct", "Mean base"]
    if name == "components":
        header.append("Delta")
    rows = []
    for label, v in ab["variants"].items():
        cats, m = v["categories"], v["mean"]
        shown = label
        if name == "components":
            shown = "{" + ", ".join(COMPONENT_NAMES[c] for c in label.split("+")) + "}"
        row = [shown, *[_cell(cats.get(c, {}).get("hybrid", {}).get("auroc"), 2) for c in categories],
               _cell(m["hybrid"]["auroc"], 2), _cell(m.get("hybrid_auroc_std"), 2),
               _cell(m["struct"]["auroc"], 2), _cell(m["base"]["auroc"], 2)]
        if name == "components":
            hb = m["hybrid"]["auroc"], m["base"]["auroc"]
            row.append("" if None in hb else f"{100 * (hb[0] - hb[1]):+.2f}")
        rows.append(row)
    return header, rows


def components_per_category(ab: dict, categories: list[str]) -> tuple[list[str], list[list[str]]]:
    labels = list(ab["variants"])
    header = ["Category", "Base", *["{" + ", ".join(COMPONENT_NAMES[c] for c in lab.split("+")) + "}" for lab in labels]]
    rows = []
    for c in [*categories, "Mean"]:
        pick = (lambda v: v["mean"]) if c == "Mean" else (lambda v, c=c: v["categories"].get(c, {}))
        first = pick(ab["variants"][labels[0]])
        rows.append([c, _cell(first.get("base", {}).get("auroc"), 2),
                     *[_cell(pick(ab["variants"][lab]).get("hybrid", {}).get("auroc"), 2) for lab in labels]])
    return header, rows


def summary_text(results: dict) -> str:
    key = results["primary"]
    sep = results["results"]["class_separated"][key]
    rout = results["results"]["routed"][key]
    lines = [f"\nStructCore benchmark, coreset {key}, {results['weights']['name']} ({results['weights']['source']}), "
             f"{results['fit_precision']} fit, {results['precision']} test on {results['device']}"]
    head = f"{'category':<16}{'base':>8}{'struct':>8}{'hybrid':>8}{'P-AUROC':>9}{'AUPRO':>8}{'routing':>9}{'routed hyb':>11}"
    lines += ["I-AUROC (%)".rjust(40), head, "-" * len(head)]
    for name in [*sep["categories"], "Mean"]:
        r = sep["mean"] if name == "Mean" else sep["categories"][name]
        q = rout["mean"] if name == "Mean" else rout["categories"][name]
        px = r["pixel"]
        lines.append(
            f"{name:<16}{_f(r['image']['base']['auroc'], 100, 1):>8}{_f(r['image']['struct']['auroc'], 100, 1):>8}"
            f"{_f(r['image']['hybrid']['auroc'], 100, 1):>8}{_f(px and px['auroc'], 100, 1):>9}"
            f"{_f(px and px['aupro'], 100, 1):>8}{_f(q.get('routing_accuracy'), 100, 1):>9}"
            f"{_f(q['image']['hybrid']['auroc'], 100, 1):>11}"
        )
    t = results["timings"]
    fc = results["feature_cache"]
    lines.append(
        f"time: wall {t['wall_s']:.1f} s = features {t['feature_extraction_s']:.1f} s (backbone {t['backbone_s']:.1f} s, "
        f"cache read {t['cache_read_s']:.1f} s; {fc['hits']} hits, {fc['misses']} misses), fit {t['fit_s']:.1f} s, "
        f"scoring {t['scoring_s']:.1f} s, metrics {t['metrics_s']:.1f} s, ablations {t['ablations_s']:.1f} s"
    )
    for name, ab in results.get("ablations", {}).items():
        parts = [f"{k}: {_f(v['mean']['hybrid']['auroc'], 100, 2)}" for k, v in ab["variants"].items()]
        lines.append(f"ablation {name} (mean hybrid I-AUROC %): " + ", ".join(parts))
    return "\n".join(lines)
