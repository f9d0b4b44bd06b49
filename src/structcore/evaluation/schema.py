"""The one schema of a benchmark folder: file names, keys, the version, and the readers.

The writers (:mod:`.artifacts`) and the readers here (used by :mod:`structcore.report`) share these
definitions. A benchmark folder ``DIR`` holds:

``results.json``::

    {
      "schema": 2, "dataset": "mvtec", "data_root": "...", "category_names": ["bottle", "screw"],
      "categories": {...}, "mean": {...},       # headline: results.class_separated[primary], with
                                                # routing_accuracy(+_overall) taken from the routed setting
      "config": {...DetectorConfig...},          # coreset_ratio is the first (primary) ratio
      "coreset_ratios": [0.01, 0.1], "primary": "0.01",
      "weights": {"name", "sha256", "source", "origin"}, "precision": "bf16", "fit_precision": "fp32",
      "device": "cpu",                          # backbone precision of the test images / of the train images
      "feature_cache": {"folder", "enabled", "hits", "misses", "extract_s", "load_s", "extractor_calls"},
      "results": {
        "<setting>": {                          # "class_separated" | "routed"
          "<ratio>": {                          # "0.01" (str(ratio)), or "size<N>" with a coreset size
            "categories": {
              "<category>": {
                "image": {"base"|"struct"|"hybrid": {"auroc", "ap", "f1_max"}},
                "pixel": {"auroc", "ap", "f1_max", "aupro"} | null,   # null: category has no masks
                "routing_accuracy": float | null,  # null in class_separated (nothing is routed)
                "routed_to": {"<category>": count} (routed only),
                "n_train", "n_test", "n_good", "n_defective", "has_masks", "bank_size", "lambda",
                "thresholds": {"base", "struct", "hybrid"},
                # class_separated only:
                "pixel_full": {"auroc", "ap", "f1_max", "aupro", "not_seen", "not_seen_defect"} | null,
                                                # in the original image frame; the unseen border left out
                "statistics": {"n_resamples", "bootstrap_seed", "auroc_ci95": {"base"|...: [low, high]},
                               "hybrid_vs_base": {"difference", "delong_z", "delong_p", "bootstrap_se",
                                                  "bootstrap_ci95", "bootstrap_p", "significance"}} | null
              }, ...
            },
            "mean": {"image": ..., "pixel": ... | null, "routing_accuracy": ...,
                     "routing_accuracy_overall": ... (routed only), "n_categories", "n_categories_pixel"}
          }
        }
      },
      "seeds": [42, ...], "bootstrap_resamples": 2000,   # the first seed is the one of "results"
      "seed_results": {"<seed>": {"<ratio>": {"categories": {...}, "mean": {...}}}},  # class_separated per seed
      "statistics": {"<ratio>": {                # over seeds (structcore.evaluation.seeds)
        "categories": {"<category>": {
          "image": {"base"|"struct"|"hybrid": {"auroc"|"ap"|"f1_max": {"mean", "std", "ci95": [low, high], "n"}}},
          "pixel": {"<metric>": {...}} | null, "pixel_full": {"<metric>", "not_seen", ...: {...}} | null,
          "hybrid_minus_base": {...}, "auroc_ci95": {"<score>": [low, high]},  # bootstrap, mean over seeds
          "delong_p", "delong_p_by_seed", "bootstrap_p_by_seed", "significant_seeds": {"gain", "loss"},
          "significance": "gain" | "none" | "loss"}},
        "mean": {"image", "pixel", "pixel_full", "hybrid_minus_base"}}},
      "ablations": {"<name>": {"description", "coreset_ratio", "variants": {
                       "<label>": {"categories": {"<category>": {"base"|"struct"|"hybrid": {auroc, ap, f1_max},
                                                                 ["lambda"]}},
                                   "mean": {"base"|"struct"|"hybrid": {...}, "hybrid_auroc_std", ["lambda"]}}}}},
      "timings": {"wall_s", "feature_extraction_s", "fit_s", "scoring_s", "metrics_s", "ablations_s",
                  "fit_s_by_ratio": {...}, "ablations": {"<name>": s}, "categories": {"<cat>": {...}}},
    }

The ``coreset`` ablation's variants (one per ratio) also hold ``coreset_ratio``, per category ``pixel``
and ``bank_size``, and in ``mean`` the ``pixel`` means and ``fit_s``.

All metric values are fractions in [0, 1]; a metric that cannot be computed is ``null`` (pixel metrics of
a category without masks, image metrics of a category whose test set lacks good or defective images).
Means are plain averages over the categories that have the value (``n_categories_pixel`` says how many
had pixel metrics); ``routing_accuracy`` in ``mean`` is the plain average over categories and
``routing_accuracy_overall`` the fraction of all test images routed correctly.

``scores/<category>.json`` is a :class:`ScoreFile`, ``maps/<category>.npz`` a :class:`MapFile`;
``tables/`` and ``tables.md`` hold :mod:`.tables`; ``figures/`` and ``report.html`` the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StructcoreError

SCHEMA = 2
RESULTS_FILE = "results.json"
SCORES_DIR = "scores"
MAPS_DIR = "maps"
TABLES_DIR = "tables"
ALL_TABLES_FILE = "tables.md"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"

SCORES = ("base", "struct", "hybrid")
IMAGE_KEYS = ("auroc", "ap", "f1_max")
PIXEL_KEYS = ("auroc", "ap", "f1_max", "aupro")
SETTINGS = ("class_separated", "routed")
#: The ablations, in the order results.json lists them.
ABLATIONS = ("components", "distances", "lambda", "layers", "coreset", "calibration", "descriptor_on")


class ReportError(StructcoreError, ValueError):
    """A benchmark folder lacks something the report reads, or was written by another schema version."""


def scores_file(folder: str | Path, category: str) -> Path:
    return Path(folder) / SCORES_DIR / f"{category}.json"


def maps_file(folder: str | Path, category: str) -> Path:
    return Path(folder) / MAPS_DIR / f"{category}.npz"


def to_json(v):
    """JSON-safe: numpy scalars and arrays to Python numbers and lists, NaN/inf to None, recursively."""
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return to_json(v.tolist())
    return v


def _floats(values) -> np.ndarray:
    """Scores as float64; JSON nulls (non-finite values) become NaN again."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


# -- results.json -------------------------------------------------------------------------------
def read_results(folder: str | Path) -> dict:
    """``results.json`` of a benchmark folder, checked to be of this :data:`SCHEMA`."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise ReportError(f"{path}: not found; is {folder} a benchmark output folder?")
    results = json.loads(path.read_text())
    if results.get("schema") != SCHEMA:
        raise ReportError(f"{path}: schema {results.get('schema')!r}, this version reads schema {SCHEMA}; "
                          "run the benchmark again")
    return results


# -- scores/<category>.json ---------------------------------------------------------------------
@dataclass
class ScoreFile:
    """One ``scores/<category>.json``: image scores of the primary coreset ratio.

    ``train*``: the train-good images StructCore was calibrated on; ``threshold_train``: their scores in
    the threshold calibration (``threshold_calibration``) the ``thresholds`` come from; ``paths``, ``labels`` (1 defective,
    0 good), ``defect_types``, ``test``: the test images scored against their own category; ``routed_to``
    and ``routed``: the category each was routed to and its scores there. ``structcore rescore`` writes
    the same file without routing (None) and, for unlabelled maps, without labels (None).
    """

    category: str
    coreset_ratio: float | None
    calibration: str
    threshold_calibration: str
    false_reject_rate: float
    lam: float
    thresholds: dict[str, float]
    train_paths: list[str]
    train: dict[str, np.ndarray]
    paths: list[str]
    labels: np.ndarray | None
    defect_types: list[str]
    test: dict[str, np.ndarray]
    routed_to: list[str] | None = None
    routed: dict[str, np.ndarray] | None = None
    threshold_train: dict[str, np.ndarray] | None = None

    def to_json(self) -> dict:
        test = {"paths": list(self.paths)}
        if self.labels is not None:
            test["labels"] = self.labels
        test["defect_types"] = list(self.defect_types)
        test.update({s: self.test[s] for s in SCORES})
        if self.routed_to is not None:
            test["routed_to"] = list(self.routed_to)
            test["routed"] = {s: self.routed[s] for s in SCORES}
        return to_json({
            "category": self.category,
            "coreset_ratio": self.coreset_ratio,
            "calibration": self.calibration,
            "threshold_calibration": self.threshold_calibration,
            "false_reject_rate": self.false_reject_rate,
            "lambda": self.lam,
            "thresholds": dict(self.thresholds),
            "train": {"paths": list(self.train_paths), **{s: self.train[s] for s in SCORES}},
            "threshold_train": None if self.threshold_train is None else {s: self.threshold_train[s] for s in SCORES},
            "test": test,
        })

    @classmethod
    def from_json(cls, doc: dict, source: str = "scores") -> ScoreFile:
        try:
            train, test = doc["train"], doc["test"]
            s = cls(
                category=str(doc["category"]),
                coreset_ratio=doc["coreset_ratio"],
                calibration=str(doc["calibration"]),
                threshold_calibration=str(doc["threshold_calibration"]),
                false_reject_rate=float(doc["false_reject_rate"]),
                lam=float(doc["lambda"]),
                thresholds={k: float(doc["thresholds"][k]) for k in SCORES},
                train_paths=[str(p) for p in train["paths"]],
                train={k: _floats(train[k]) for k in SCORES},
                paths=[str(p) for p in test["paths"]],
                labels=np.asarray(test["labels"], dtype=np.int64) if "labels" in test else None,
                defect_types=[str(t) for t in test["defect_types"]],
                test={k: _floats(test[k]) for k in SCORES},
            )
            if doc.get("threshold_train") is not None:
                s.threshold_train = {k: _floats(doc["threshold_train"][k]) for k in SCORES}
            if "routed_to" in test:
                s.routed_to = [str(c) for c in test["routed_to"]]
                s.routed = {k: _floats(test["routed"][k]) for k in SCORES}
        except (KeyError, TypeError) as e:
            raise ReportError(f"{source}: not a score file of schema {SCHEMA} (missing {e})") from None
        n = len(s.paths)
        for name, values in [("labels", s.labels), ("defect_types", s.defect_types), ("routed_to", s.routed_to),
                             *s.test.items(), *(("routed " + k, v) for k, v in (s.routed or {}).items())]:
            if values is None:
                continue
            if len(values) != n:
                raise ReportError(f"{source}: test {name} has {len(values)} entries for {n} test images")
        return s


def read_scores(path: str | Path) -> ScoreFile:
    path = Path(path)
    return ScoreFile.from_json(json.loads(path.read_text()), str(path))


# -- maps/<category>.npz ------------------------------------------------------------------------
@dataclass
class MapFile:
    """One ``maps/<category>.npz``: a few test images of a category with their anomaly maps.

    ``maps`` float32 ``[n, H, W]``, ``masks`` bool ``[n, H, W]`` (all False without ground truth),
    ``images`` uint8 ``[n, H, W, 3]`` (the input as the model saw it), ``indices`` into the category's
    test images; ``scores`` and ``thresholds`` of the primary coreset ratio.
    """

    category: str
    maps: np.ndarray
    masks: np.ndarray
    has_masks: bool
    images: np.ndarray
    paths: list[str]
    labels: np.ndarray
    defect_types: list[str]
    indices: np.ndarray
    scores: dict[str, np.ndarray]
    thresholds: dict[str, float]

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz members (the category is the file's name)."""
        return {
            "maps": self.maps.astype(np.float32),
            "masks": self.masks.astype(bool),
            "has_masks": np.array(self.has_masks),
            "has_mask": np.full(len(self.maps), self.has_masks),
            "images": self.images.astype(np.uint8),
            "paths": np.array(self.paths),
            "labels": np.asarray(self.labels, dtype=np.int64),
            "defect_types": np.array(self.defect_types),
            "indices": np.asarray(self.indices, dtype=np.int64),
            **{s: np.asarray(self.scores[s], dtype=np.float64) for s in SCORES},
            **{f"threshold_{s}": np.array(self.thresholds[s]) for s in SCORES},
        }

    @classmethod
    def from_arrays(cls, category: str, z, source: str = "maps") -> MapFile:
        try:
            m = cls(
                category=category,
                maps=np.asarray(z["maps"], dtype=np.float32),
                masks=np.asarray(z["masks"], dtype=bool),
                has_masks=bool(z["has_masks"]),
                images=np.asarray(z["images"], dtype=np.uint8),
                paths=[str(p) for p in np.asarray(z["paths"]).tolist()],
                labels=np.asarray(z["labels"], dtype=np.int64),
                defect_types=[str(t) for t in np.asarray(z["defect_types"]).tolist()],
                indices=np.asarray(z["indices"], dtype=np.int64),
                scores={s: np.asarray(z[s], dtype=np.float64) for s in SCORES},
                thresholds={s: float(z[f"threshold_{s}"]) for s in SCORES},
            )
        except KeyError as e:
            raise ReportError(f"{source}: not a map file of schema {SCHEMA} (missing {e})") from None
        n = len(m.maps)
        for name, values in [("masks", m.masks), ("images", m.images), ("paths", m.paths), ("labels", m.labels),
                             ("defect_types", m.defect_types), *m.scores.items()]:
            if len(values) != n:
                raise ReportError(f"{source}: {name} has {len(values)} entries for {n} maps")
        return m


def read_maps(path: str | Path) -> MapFile:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        return MapFile.from_arrays(path.stem, z, str(path))
