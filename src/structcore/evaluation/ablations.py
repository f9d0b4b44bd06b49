"""The ablations: StructCore variants refitted on the scored train-good and test images, the layer sweep,
and the coreset summary (computed for the class-separated setting at the primary coreset ratio).

Components, distances, lambda and descriptor_on are pure functions of the base scores and descriptors
the fitted model already has (only the StructCore statistics are refitted); calibration compares the
descriptors of the train-good images scored in-sample, leave-one-image-out and held-out; layers fit a
new model per block set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..config import DetectorConfig
from ..data import Category
from ..detector import Detector
from ..scoring import CalibrationRecord, ScoredImages
from ..structure import DISTANCES, StructCalibration, select_components
from .protocol import (
    EvaluatedCategory, FeatureSource, FittedCategory, Timer, crop_masks, image_metrics, log, mean, pixel_metrics,
)
from .schema import ABLATIONS, IMAGE_KEYS, PIXEL_KEYS, SCORES
from .statistics import seed_summary

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
DESCRIPTIONS = {
    "components": "hybrid score with a subset of phi(S) = [std, top-r mean, TV] (paper Tables 5 and 7)",
    "distances": "structural distance D_struct (paper Table 6)",
    "lambda": "fixed hybrid weight lambda vs lambda_auto (paper Section 4.3)",
    "layers": "single ViT blocks and chosen block sets (paper Table 12); a new model per set",
    "calibration": "train-good maps for StructCore's statistics: in-sample, leave-one-image-out, held-out split",
    "descriptor_on": "phi computed on the final (upsampled, blurred) map or on the raw patch-score grid",
}


@dataclass(frozen=True)
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
    def on_scores(self) -> bool:
        """Whether an ablation runs on the primary model's scored images."""
        return self.components or self.distances or bool(self.lambdas) or self.calibration or self.descriptor_on

    @property
    def any(self) -> bool:
        return self.on_scores or self.layers or bool(self.layer_sets)


@dataclass
class Variant:
    """A variant's test scores; ``lam`` where the ablation records the lambda each variant used, ``pixel``
    its pixel metrics where it has maps of its own (layers)."""

    scores: dict[str, np.ndarray]
    lam: float | None = None
    pixel: dict | None = None


Described = CalibrationRecord | ScoredImages  # base scores and descriptors of a set of images


def _phi(images: Described, on: str) -> np.ndarray:
    return images.phi_map if on == "map" else images.phi_grid


def refit(train: Described, test: Described, config: DetectorConfig, *, components: tuple[str, ...] | None = None,
          distance: str | None = None, lam: float | None = None, on: str | None = None) -> tuple[StructCalibration, dict]:
    """StructCore fitted on ``train`` with some settings changed, and the scores of ``test`` under it."""
    components = components or config.components
    on = on or config.descriptor_on
    cal = StructCalibration.fit(select_components(_phi(train, on), components), train.base, components,
                                config.top_ratio, distance or config.distance, lam)
    return cal, cal.scores_from_descriptors(select_components(_phi(test, on), components), test.base)


def components(train: Described, test: Described, config: DetectorConfig) -> dict[str, Variant]:
    return {"+".join(c): Variant(refit(train, test, config, components=c, lam=config.lam)[1]) for c in COMPONENT_SUBSETS}


def distances(train: Described, test: Described, config: DetectorConfig) -> dict[str, Variant]:
    return {d: Variant(refit(train, test, config, distance=d, lam=config.lam)[1]) for d in DISTANCES}


def lambdas(train: Described, test: Described, config: DetectorConfig, values: tuple[float, ...]) -> dict[str, Variant]:
    out = {}
    for lam in (None, *values):
        cal, scores = refit(train, test, config, lam=lam)
        out["auto" if lam is None else f"{lam:g}"] = Variant(scores, cal.lam)
    return out


def descriptor_on(train: Described, test: Described, config: DetectorConfig) -> dict[str, Variant]:
    out = {}
    for where in ("map", "grid"):
        cal, scores = refit(train, test, config, lam=config.lam, on=where)
        out[where] = Variant(scores, cal.lam)
    return out


def calibration(in_sample: Described, leave_one_out: Described, test: Described, held_out: Variant,
                config: DetectorConfig) -> dict[str, Variant]:
    """``in_sample`` / ``leave_one_out``: the train-good images scored against a bank of all of them
    (``test`` scored against that bank too); ``held_out``: the held-out model's own test scores."""
    out = {}
    for mode, train in (("in-sample", in_sample), ("leave-one-out", leave_one_out)):
        cal, scores = refit(train, test, config, lam=config.lam)
        out[mode] = Variant(scores, cal.lam)
    out["held-out"] = held_out
    return out


# -- collecting over categories ---------------------------------------------------------------------
class Collected:
    """Per ablation, variant and category: the image metrics (and lambda) of the variant's scores."""

    def __init__(self):
        self.metrics: dict[str, dict[str, dict[str, dict]]] = {}

    def add(self, name: str, category: str, variants: dict[str, Variant], labels: np.ndarray):
        for label, v in variants.items():
            entry = image_metrics(labels, v.scores)
            if v.lam is not None:
                entry["lambda"] = v.lam
            if v.pixel is not None:
                entry["pixel"] = v.pixel
            self.metrics.setdefault(name, {}).setdefault(label, {})[category] = entry

    def summary(self, coreset_ratio: float | None) -> dict:
        """The ``ablations`` blocks of results.json (without the coreset summary)."""
        out = {}
        for name, variants in self.metrics.items():
            block = {"description": DESCRIPTIONS[name], "coreset_ratio": coreset_ratio, "variants": {}}
            for label, cats in variants.items():
                rows = list(cats.values())
                m: dict = {s: {k: mean([r[s][k] for r in rows]) for k in IMAGE_KEYS} for s in SCORES}
                m["hybrid_auroc_std"] = _std([r["hybrid"]["auroc"] for r in rows])
                if any("lambda" in r for r in rows):
                    m["lambda"] = mean([r.get("lambda") for r in rows])
                m.update(_pixel_mean(rows))
                block["variants"][label] = {"categories": cats, "mean": m}
            out[name] = block
        return out


def over_seeds(per_seed: list[Collected]) -> dict:
    """Per ablation and variant, the base / struct / hybrid I-AUROC (and pixel metrics, where the variant
    has them) of each category and of the category mean as summaries over seeds (``per_seed``: one
    Collected per seed); only the ablations every seed ran."""
    out: dict = {}
    for name, variants in per_seed[0].metrics.items():
        if any(name not in c.metrics for c in per_seed):
            continue
        for label, cats in variants.items():
            runs = [c.metrics[name][label] for c in per_seed]
            out.setdefault(name, {})[label] = {
                "categories": {cat: _over_runs([r[cat] for r in runs]) for cat in cats},
                "mean": _over_runs([_category_mean(r) for r in runs]),
            }
    return out


def _category_mean(entries: dict[str, dict]) -> dict:
    """One seed's category mean of a variant: I-AUROCs and, over the categories that have them, pixel metrics."""
    rows = list(entries.values())
    return {**{s: {"auroc": mean([e[s]["auroc"] for e in rows])} for s in SCORES}, **_pixel_mean(rows)}


def _pixel_mean(rows: list[dict]) -> dict:
    """``{"pixel": ...}``: the pixel metrics averaged over the rows that have them; ``{}`` if none has."""
    pixel = [r["pixel"] for r in rows if "pixel" in r]
    return {"pixel": {k: mean([p[k] for p in pixel]) for k in PIXEL_KEYS}} if pixel else {}


def _over_runs(entries: list[dict]) -> dict:
    """Seed summaries of the I-AUROCs (and pixel metrics) of one variant's entries, one per seed."""
    out = {s: seed_summary([e[s]["auroc"] for e in entries], bounds=(0.0, 1.0)) for s in SCORES}
    if all("pixel" in e for e in entries):
        out["pixel"] = {k: seed_summary([e["pixel"][k] for e in entries], bounds=(0.0, 1.0)) for k in PIXEL_KEYS}
    return out


def _std(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def ordered(blocks: dict) -> dict:
    return {k: blocks[k] for k in ABLATIONS if k in blocks}


def coreset_summary(class_separated: dict[str, dict], ratios: dict[str, float | None], fit_s: dict[str, float]) -> dict:
    """Memory-bank size: the class-separated main results (``class_separated[key]``) at each coreset ratio."""
    block = {"description": "memory-bank size: the main results at each coreset ratio (class-separated)",
             "variants": {}}
    for key, res in class_separated.items():
        cats = {name: {**{s: r["image"][s] for s in SCORES}, "pixel": r["pixel"], "bank_size": r["bank_size"]}
                for name, r in res["categories"].items()}
        m = {**{s: res["mean"]["image"][s] for s in SCORES}, "pixel": res["mean"]["pixel"]}
        m["hybrid_auroc_std"] = _std([c["hybrid"]["auroc"] for c in cats.values()])
        m["fit_s"] = fit_s[key]
        block["variants"][key] = {"coreset_ratio": ratios[key], "categories": cats, "mean": m}
    return block


# -- the layer sweep --------------------------------------------------------------------------------
def layer_sets(options: Ablations, depth: int) -> list[tuple[int, ...]]:
    """Single blocks -1..-min(12, depth) (``options.layers``), then the chosen sets not already in."""
    sets: list[tuple[int, ...]] = []
    if options.layers:
        sets += [(-b,) for b in range(1, min(12, depth) + 1)]
    return sets + [tuple(s) for s in options.layer_sets if tuple(s) not in sets]


def layer_sweep(
    categories: list[Category],
    config: DetectorConfig,
    sets: list[tuple[int, ...]],
    features: FeatureSource,
    new_detector: Callable[[DetectorConfig], Detector],
    collected: Collected,
) -> None:
    """Fit and score a new model per block set (image and, with masks, pixel metrics); every block of
    every set is extracted in one pass first."""
    depth = features.depth
    union = sorted({b % depth for s in (*sets, config.blocks) for b in s})
    features.fill(categories, [b - depth for b in union])
    masks = {cat.name: crop_masks(cat, config.preprocess) for cat in categories if cat.test}
    for blocks in sets:
        label = ",".join(str(b) for b in blocks)
        det = new_detector(replace(config, blocks=blocks))
        t0 = time.perf_counter()
        for cat in categories:
            if not cat.test:
                continue
            train = features.features(cat.train, blocks, det.fuse, f"{cat.name}: train [{label}]", train=True)
            det.fit_features(cat.name, train, [str(p) for p in cat.train])
            del train
            test = features.features([s.path for s in cat.test], blocks, det.fuse, f"{cat.name}: test [{label}]")
            scored = det.score_features(cat.name, test, keep_maps=masks[cat.name] is not None)
            pixel = None if masks[cat.name] is None else pixel_metrics(masks[cat.name], scored.maps)
            collected.add("layers", cat.name, {label: Variant(scored.scores, pixel=pixel)},
                          np.array([s.label for s in cat.test]))
        log(f"layer set {label}: {time.perf_counter() - t0:.1f} s")


# -- one category ---------------------------------------------------------------------------------------
def category_ablations(options: Ablations, config: DetectorConfig, fitted: FittedCategory,
                       evaluated: EvaluatedCategory, primary: str, timer: Timer) -> dict[str, dict[str, Variant]]:
    """Every score-level ablation of one category, on the primary model's scored images."""
    train, test = fitted.calibration, evaluated.ratios[primary].scored
    out: dict[str, dict[str, Variant]] = {}
    if options.components:
        with timer("ablation:components"):
            out["components"] = components(train, test, config)
    if options.distances:
        with timer("ablation:distances"):
            out["distances"] = distances(train, test, config)
    if options.lambdas:
        with timer("ablation:lambda"):
            out["lambda"] = lambdas(train, test, config, options.lambdas)
    if options.calibration:
        with timer("ablation:calibration"):
            held = Variant(evaluated.held_out.scores, fitted.held_out.categories_[fitted.name].calibration.lam)
            out["calibration"] = calibration(fitted.in_sample, fitted.leave_one_out, evaluated.reference, held, config)
    if options.descriptor_on:
        with timer("ablation:descriptor_on"):
            out["descriptor_on"] = descriptor_on(train, test, config)
    return out
