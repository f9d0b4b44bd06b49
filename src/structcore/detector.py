"""The public detector: fit on good images per category, then score, route and decide.

``Detector.fit`` adds categories one at a time (adding one never refits another);
``Detector.predict`` returns one :class:`Prediction` per image (``predict_stream`` yields them);
``save``/``load`` use a model folder of a ``manifest.json`` plus safetensors files (see
:mod:`structcore.model_io`).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones import Backbone, load_backbone
from .config import DetectorConfig
from .coreset import coreset_size, greedy_coreset
from .data import iter_batches
from .feature_cache import CacheContext, FeatureCache
from .errors import CalibrationWarning, ConfigError, DataError, ModelFileError, NotFittedError, UnknownCategoryError, WeightsError
from .features import FeatureExtractor, Preprocess, fuse_layers, random_projection, resolve_precision
from .runtime import resolve_runtime
from .images import source_name, source_size
from .knn import BACKENDS, MemoryBank
from .model_io import check_detector_manifest, read_model, write_model
from .regions import Region, defect_regions, to_original_frame
from .router import route, routing_prototypes
from .scoring import SCORES, CalibrationRecord, ScoredImages, ScoringPipeline
from .structure import StructCalibration
from .thresholds import PIXEL, Thresholds
from .weights import WeightsInfo

PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: Good training images (evenly spread over all categories) that calibrate the int8 backbone.
INT8_CALIBRATION_IMAGES = 128


@dataclass
class CategoryModel:
    """What a category keeps after fitting: bank (+ each entry's source image), prototypes, StructCore's
    calibration, the decision thresholds, and the record of what the calibration was fitted on (None for
    models saved before it was kept)."""

    name: str
    bank: torch.Tensor
    bank_source: torch.Tensor
    prototypes: torch.Tensor
    calibration: StructCalibration
    thresholds: Thresholds
    train_images: list[str]
    calibration_record: CalibrationRecord | None = None


@dataclass
class Prediction:
    """One scored image: its category, the three scores with their thresholds and normalised values
    (1.0 = the threshold, 0 = the median train-good image), the decision, the defect regions (original
    image pixels, above the category's ``pixel_threshold``) and the anomaly map (crop frame; None when
    predicted with ``maps=False``; :meth:`original_map` gives it in the original image's frame)."""

    path: str | None
    category: str
    scores: dict[str, float]
    thresholds: dict[str, float]
    normalised_scores: dict[str, float]
    decision_score: str
    pixel_threshold: float
    image_size: tuple[int, int]
    regions: list[Region]
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    preprocess: Preprocess | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return self.scores[self.decision_score]

    @property
    def threshold(self) -> float:
        return self.thresholds[self.decision_score]

    @property
    def normalised_score(self) -> float:
        return self.normalised_scores[self.decision_score]

    @property
    def is_anomalous(self) -> bool:
        return self.score > self.threshold

    @property
    def decision(self) -> str:
        return "reject" if self.is_anomalous else "accept"

    def original_map(self) -> np.ndarray:
        """The anomaly map ``[height, width]`` in the original image's frame, NaN outside the crop."""
        if self.anomaly_map is None:
            raise ValueError(f"{self.path}: predicted with maps=False, so there is no anomaly map")
        return to_original_frame(self.anomaly_map, self.image_size, self.preprocess)


def _is_single_image(images) -> bool:
    """One image given where several are expected: a path, a PIL image or one image array."""
    return isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))


#: Backbone precision for train images unless asked otherwise: the memory bank then is the fp32 pipeline's.
FIT_PRECISION = "fp32"

_RECORD_KEYS = ("ids", "base", "phi_map", "phi_grid")  # CalibrationRecord fields, saved as calibration_<key>
_RECORD_TENSORS = (*(f"calibration_{k}" for k in _RECORD_KEYS), *(f"calibration_score_{s}" for s in SCORES[1:]))


class Detector:
    """StructCore anomaly detector. ``__init__`` only stores and checks settings; the backbone loads on
    first use (by ``config.backbone``'s registry entry, see :mod:`structcore.backbones`).

    ``precision`` is the backbone's for the images scored (``auto``: bf16 where the CPU or GPU has bf16
    matrix units), ``fit_precision`` its precision for the train images: fp32 by default, so the memory
    bank and calibration are the fp32 pipeline's (a bf16 fit picks a different coreset). ``runtime`` runs
    the backbone on ``torch`` or ``openvino`` (:mod:`structcore.runtime`; default ``$STRUCTCORE_RUNTIME``,
    else ``auto``: OpenVINO on a CPU where it is installed).
    ``coreset_selector(features, n_select, seed, progress=...)`` returns the bank's row indices (default
    :func:`~structcore.coreset.greedy_coreset`). ``feature_cache``: a folder where the train images' raw
    block tokens are kept (:mod:`structcore.feature_cache`), so refitting on them again is cheap.
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        *,
        weights: str | Path | None = None,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        knn_backend: str = "auto",
        num_workers: int = 2,
        progress: bool = True,
        compile: bool = False,
        fit_precision: str | None = None,
        coreset_selector: Callable[..., torch.Tensor] = greedy_coreset,
        feature_cache: str | Path | None = None,
        runtime: str | None = None,
    ):
        if precision not in PRECISIONS or (fit_precision is not None and fit_precision not in PRECISIONS):
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r} / {fit_precision!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if knn_backend not in BACKENDS:
            raise ConfigError(f"knn_backend must be one of {BACKENDS}, got {knn_backend!r}")
        self.config = config or DetectorConfig()
        self.compile = compile
        self.weights = weights
        try:
            self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        except RuntimeError as e:
            raise ConfigError(f"device {device!r}: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA GPU is usable here; use --device cpu (or auto)")
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {device!r}: structcore runs on cpu or cuda; use --device cpu, cuda or auto")
        self.precision = resolve_precision(precision, self.device)
        self.fit_precision = resolve_precision(fit_precision or FIT_PRECISION, self.device)
        self.runtime = resolve_runtime(runtime, self.device)
        if self.precision == "int8" and self.runtime != "openvino":
            raise ConfigError("precision int8 runs on the openvino runtime (--runtime openvino)")
        if self.fit_precision == "int8":
            raise ConfigError("int8 is calibrated on the fitted model's good images, so it cannot fit it: "
                              "use --fit-precision fp32 or bf16")
        self.batch_size = batch_size
        self.knn_backend = knn_backend
        self.num_workers = num_workers
        self.progress = progress
        self.coreset_selector = coreset_selector
        self.feature_cache = FeatureCache(feature_cache)
        self.pipeline = ScoringPipeline(self.config)
        self.categories_: dict[str, CategoryModel] = {}
        self.fit_timings_: dict[str, dict[str, float]] = {}  # per category: coreset_s, calibration_knn_s
        self.projection_: torch.Tensor | None = None
        self.weights_info_: WeightsInfo | None = None
        self._backbone: Backbone | None = None
        self._extractors: dict[str, FeatureExtractor] = {}  # by precision, sharing one backbone
        self._banks: dict[str, MemoryBank] = {}

    # -- features -------------------------------------------------------------------------------
    def use_weights(self, info: WeightsInfo):
        """Record the weights the model runs on (they must be the ones it was fitted with) and, if its config
        names no blocks, take those weights' default blocks."""
        if self.weights_info_ is not None and info.sha256 != self.weights_info_.sha256:
            raise WeightsError(
                f"this model was fitted with {self.config.backbone} weights sha256 {self.weights_info_.sha256}, "
                f"but the weights found now ({info.path}) have sha256 {info.sha256}; pass the original file "
                "with --weights"
            )
        self.weights_info_ = info
        if self.config.blocks is None:
            self.config = self.config.for_weights(info)
            self.pipeline = ScoringPipeline(self.config)

    def use_backbone(self, backbone: Backbone, info: WeightsInfo):
        """Use an already built backbone instead of loading ``config.backbone``'s weights on first use."""
        self.use_weights(info)
        self._ensure_projection(backbone.embed_dim * len(self.config.blocks))
        self._backbone = backbone
        self._extractors = {}

    def _ensure_backbone(self):
        if self._backbone is None:
            self.use_backbone(*load_backbone(self.config.backbone, self.weights))

    def extractor(self, precision: str | None = None) -> FeatureExtractor:
        """The extractor of ``precision`` (default: the test-time precision), built on first use."""
        precision = precision or self.precision
        self._ensure_backbone()
        if precision not in self._extractors:
            self._extractors[precision] = FeatureExtractor(
                self._backbone, self.config.blocks, self.projection_, precision, self.device, self.compile,
                self.runtime, self._weights_id(), self.progress, self._int8_graph if precision == "int8" else None,
            )
        return self._extractors[precision]

    def _weights_id(self) -> str:
        return f"{self.config.backbone}:{self.weights_info_.sha256}"

    def _int8_graph(self, crop: int) -> Path:
        """The int8 backbone graph, quantised (once, then cached) on this model's good training images."""
        from .runtime import graph_key, quantise

        paths = sorted({p for m in self.categories_.values() for p in m.train_images})
        if not paths:
            raise ConfigError("int8 is calibrated on the model's good training images: fit a category first")
        pick = np.linspace(0, len(paths) - 1, min(INT8_CALIBRATION_IMAGES, len(paths))).round().astype(int)
        paths = [paths[i] for i in sorted(set(pick))]
        missing = next((p for p in paths if not Path(p).is_file()), None)
        if missing:
            raise DataError(f"{missing}: a good training image recorded in the model is gone; int8 calibrates on them")
        fp32 = self.extractor("fp32")._tokens.graph(crop)
        calibration = [batch.numpy() for _, batch in iter_batches(paths, self.config.preprocess, 1, self.num_workers)]
        key = graph_key(self._weights_id(), crop, self.config.blocks, "int8", paths=[str(p) for p in paths])
        return quantise(fp32, calibration, key, self.progress)

    def _ensure_projection(self, in_dim: int):
        if self.projection_ is None and self.config.projection_dim is not None:
            self.projection_ = random_projection(in_dim, self.config.projection_dim, self.config.seed)
        if self.projection_ is not None and self.projection_.shape[0] != in_dim:
            raise ConfigError(f"the model's projection expects {self.projection_.shape[0]} input channels, got {in_dim}")

    def fuse(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Projected features ``[N, P, D]`` from raw block tokens (one ``[N, P, C]`` per config block).

        For callers that cache backbone outputs (the benchmark): same result as :meth:`extract`.
        """
        self._ensure_projection(sum(t.shape[-1] for t in layers))
        return fuse_layers(layers, self.projection_)

    def extract(self, images, desc: str = "features", precision: str | None = None, first_index: int = 0) -> torch.Tensor:
        """Projected patch features ``[N, P, D]`` of images (paths, PIL images or arrays; decoded in
        background threads). ``precision``: the backbone's, default the test-time one."""
        images = list(images)
        if not images:
            raise DataError("no images to extract features from")
        extractor = self.extractor(precision)
        out: torch.Tensor | None = None
        batches = iter_batches(images, self.config.preprocess, self.batch_size, self.num_workers, first_index=first_index)
        with tqdm(total=len(images), desc=desc, unit="img", disable=not self.progress) as bar:
            for indices, batch in batches:
                feats = extractor(batch).cpu()
                if out is None:
                    out = torch.empty((len(images), *feats.shape[1:]), dtype=torch.float32)
                out[indices[0] : indices[-1] + 1] = feats
                bar.update(len(indices))
        return out

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, category: str, images) -> CategoryModel:
        """Fit (or refit) one category from its good training images (paths, PIL images or arrays);
        other categories are untouched."""
        images = [images] if _is_single_image(images) else list(images)
        if not images:
            raise DataError(f"category {category!r} has no training images")
        desc = f"{category}: train features"
        if self.feature_cache.enabled and all(isinstance(i, (str, Path)) for i in images):
            extractor = self.extractor(self.fit_precision)
            context = CacheContext(self.config.backbone, self.weights_info_.sha256, self.config.preprocess,
                                   self.fit_precision, self.device.type, self.runtime)
            features = self.feature_cache.layer_tokens(extractor, context, images, self.config.blocks, self.batch_size,
                                                       self.num_workers, self.progress, desc, reduce=self.fuse)
        else:
            features = self.extract(images, desc=desc, precision=self.fit_precision)
        return self.fit_features(category, features, [source_name(s, i) for i, s in enumerate(images)])

    def fit_features(self, category: str, features: torch.Tensor, train_images: list[str]) -> CategoryModel:
        """Fit a category from already extracted train-good features ``[N, P, D]``."""
        cfg = self.config
        n = features.shape[0]
        need = {"in-sample": 2, "leave-one-out": 2, "held-out": 3}[cfg.calibration]
        if n < need:
            raise DataError(
                f"category {category!r} has {n} training image(s); {cfg.calibration} calibration of StructCore "
                f"needs at least {need} (a few dozen give stable thresholds)"
            )
        bank_ids, calib_ids = self.calibration_split(n)
        started = time.perf_counter()
        bank = self._build_bank(features, bank_ids)
        coreset_s = time.perf_counter() - started
        stages: dict[str, float] = {}
        pipeline = ScoringPipeline(cfg, on_stage=stages.__setitem__)
        scored, left_out = self._score_train_images(pipeline, bank, features, calib_ids)
        calibration, record = pipeline.calibrate(scored, calib_ids)
        started = time.perf_counter()
        thresholds = self.calibrate_thresholds(features, bank, calibration, cfg.threshold_calibration, scored, calib_ids,
                                               left_out=left_out)
        self.fit_timings_[category] = {"coreset_s": coreset_s, "calibration_knn_s": stages["knn"],
                                       "threshold_calibration_s": time.perf_counter() - started}
        for note in [*calibration.warnings, *thresholds.warnings()]:
            warnings.warn(f"category {category!r}: {note}", CalibrationWarning, stacklevel=3)
        model = CategoryModel(
            name=category,
            bank=bank.entries,
            bank_source=bank.source_image,
            prototypes=routing_prototypes(features.reshape(-1, features.shape[-1]), cfg.routing_prototypes, cfg.seed),
            calibration=calibration,
            thresholds=thresholds,
            train_images=train_images,
            calibration_record=record,
        )
        self.categories_[category] = model
        self._banks[category] = bank
        return model

    def _score_train_images(self, pipeline: ScoringPipeline, bank: MemoryBank, features: torch.Tensor, calib_ids):
        """The calibration images scored for StructCore's statistics and, when the same search gives them
        (in-sample statistics, leave-one-out thresholds), scored leave-one-out too (else None)."""
        cfg = self.config
        if cfg.calibration == "in-sample" and cfg.threshold_calibration == "leave-one-out":
            try:
                return pipeline.run_in_sample_and_left_out(bank, features, calib_ids)
            except ConfigError:  # too few entries besides an image's own: calibrate_thresholds notes the fallback
                pass
        exclude = calib_ids if cfg.calibration == "leave-one-out" else None
        return pipeline.run(bank, features[calib_ids], exclude_images=exclude, keep_maps=False), None

    def _build_bank(self, features: torch.Tensor, ids: np.ndarray) -> MemoryBank:
        """The coreset memory bank of the images ``ids`` of ``features`` (each entry knows its image)."""
        cfg = self.config
        flat = features[ids].reshape(-1, features.shape[-1])
        source = torch.as_tensor(ids).repeat_interleave(features.shape[1])
        size = coreset_size(len(flat), cfg.coreset_ratio, cfg.coreset_size)
        chosen = self.coreset_selector(flat, size, cfg.seed, progress=self.progress)
        return MemoryBank(flat[chosen], source[chosen], self.knn_backend, self.device)

    def calibrate_thresholds(self, features: torch.Tensor, bank: MemoryBank, calibration: StructCalibration,
                             method: str, scored: ScoredImages | None = None, scored_ids=None,
                             false_reject_rate: float | None = None, left_out: ScoredImages | None = None) -> Thresholds:
        """Thresholds from the train-good ``features`` scored the ``method`` way (see
        :mod:`structcore.thresholds`) under ``calibration``. ``scored``: the images ``scored_ids`` as
        StructCore's calibration scored them; "in-sample" thresholds are theirs, and they are reused
        where they are what ``method`` asks for. ``left_out``: all of them already scored leave-one-out."""
        cfg, n = self.config, len(features)
        everything = np.arange(n)
        reuse = scored is not None and (method == "in-sample" or (
            method == cfg.calibration and np.array_equal(scored_ids, everything)))
        notes = []
        try:
            if reuse:
                result = scored
            elif method == "leave-one-out":
                result = left_out if left_out is not None else self.pipeline.run(bank, features, exclude_images=everything,
                                                                                  keep_maps=False)
            elif method == "k-fold":
                result = self._k_fold_scores(features)
        except ConfigError as e:  # too few bank entries left without an image's own (tiny categories)
            notes.append(f"{method} threshold calibration is not possible here ({e}); the thresholds are in-sample, "
                         "so new good images may be rejected more often than the false-reject rate says")
            method = "in-sample"
        if method == "in-sample" and not reuse:
            result = scored if scored is not None else self.pipeline.run(bank, features, keep_maps=False)
        scores = self.pipeline.scores(calibration, result)
        scores[PIXEL] = result.peak
        return Thresholds.from_scores(method, scores, false_reject_rate or cfg.false_reject_rate, notes)

    def _k_fold_scores(self, features: torch.Tensor) -> ScoredImages:
        """Each fold of the train images scored against a bank built from the other folds."""
        n = len(features)
        order = np.random.default_rng(self.config.seed).permutation(n)
        folds = np.array_split(order, min(self.config.threshold_folds, n))
        parts: list[tuple[np.ndarray, ScoredImages]] = []
        for fold in folds:
            fold = np.sort(fold)
            bank = self._build_bank(features, np.setdiff1d(np.arange(n), fold))
            parts.append((fold, self.pipeline.run(bank, features[fold], keep_maps=False)))
        position = np.argsort(np.concatenate([f for f, _ in parts]))
        joined = {k: np.concatenate([getattr(p, k) for _, p in parts])[position] for k in ("base", "peak", "phi_map", "phi_grid")}
        grids = torch.cat([p.grids for _, p in parts])[torch.from_numpy(position)]
        return ScoredImages(grids=grids, **joined)

    def set_thresholds(self, category: str, *, false_reject_rate: float | None = None, value: float | None = None,
                       score: str | None = None) -> Thresholds:
        """Re-derive a category's thresholds for another false-reject rate, or set one score's (default the
        decision score's) threshold to a ``value``; no refit. Returns the new thresholds."""
        self._require_fitted(category)
        if (false_reject_rate is None) == (value is None):
            raise ConfigError("give either a false-reject rate or a threshold value")
        m = self.categories_[category]
        if value is None:
            m.thresholds = m.thresholds.at_rate(false_reject_rate)
        else:
            m.thresholds = m.thresholds.with_value(score or self.config.decision_score, value)
        return m.thresholds

    def calibration_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Images that build the bank and images that calibrate StructCore."""
        everything = np.arange(n)
        if self.config.calibration != "held-out":
            return everything, everything
        order = np.random.default_rng(self.config.seed).permutation(n)
        n_calib = min(n - 1, max(2, round(n * self.config.heldout_fraction)))
        return np.sort(order[n_calib:]), np.sort(order[:n_calib])

    # -- scoring --------------------------------------------------------------------------------
    def _require_fitted(self, category: str | None = None):
        if not self.categories_:
            raise NotFittedError("This Detector has no fitted category yet. Call fit(category, images) first.")
        if category is not None and category not in self.categories_:
            known = ", ".join(sorted(self.categories_))
            raise UnknownCategoryError(f"unknown category {category!r}; this model has: {known}")

    def memory_bank(self, category: str) -> MemoryBank:
        """The fitted category's memory bank, ready for kNN queries (built once, then reused)."""
        self._require_fitted(category)
        if category not in self._banks:
            m = self.categories_[category]
            self._banks[category] = MemoryBank(m.bank, m.bank_source, self.knn_backend, self.device)
        return self._banks[category]

    def score_features(self, category: str, features: torch.Tensor, keep_maps: bool = True) -> ScoredImages:
        """Maps and base/struct/hybrid scores of features ``[B, P, D]`` against ``category``."""
        self._require_fitted(category)
        return self.pipeline.run(
            self.memory_bank(category), features, self.categories_[category].calibration, keep_maps=keep_maps
        )

    def route(self, features: torch.Tensor) -> list[str]:
        """Routed category of each image's features ``[B, P, D]`` (paper eq. 3-4)."""
        self._require_fitted()
        return route(features, {name: m.prototypes for name, m in self.categories_.items()})

    def predict(self, images, category: str | None = None, *, maps: bool = True) -> list[Prediction]:
        """Score images (paths, PIL images or arrays, or one of them); with ``category=None`` each is routed
        first. ``maps=False`` skips keeping the anomaly maps."""
        return list(self.predict_stream(images, category, maps=maps))

    def predict_stream(self, images: Iterable, category: str | None = None, *, maps: bool = True) -> Iterator[Prediction]:
        """:meth:`predict` over any iterable, yielding predictions in order as their chunk is scored."""
        self._require_fitted(category)
        source = iter([images] if _is_single_image(images) else images)
        offset = 0
        while chunk := list(itertools.islice(source, self.batch_size * 8)):
            features = self.extract(chunk, desc="predict", first_index=offset)
            categories = [category] * len(chunk) if category else self.route(features)
            slots: list[Prediction | None] = [None] * len(chunk)
            for name in dict.fromkeys(categories):
                rows = [i for i, c in enumerate(categories) if c == name]
                scored = self.score_features(name, features[rows])
                for j, i in enumerate(rows):
                    slots[i] = self._prediction(name, scored, j, chunk[i], offset + i, maps)
            yield from slots
            offset += len(chunk)

    def _prediction(self, category: str, scored: ScoredImages, j: int, image, index: int, keep_map: bool) -> Prediction:
        """Row ``j`` of ``scored`` as the Prediction of ``image``, with its regions in the original frame."""
        t = self.categories_[category].thresholds
        size = source_size(image)
        pre = self.config.preprocess
        pixel = t.values[PIXEL]
        regions = defect_regions(to_original_frame(scored.maps[j], size, pre), pixel) if scored.peak[j] > pixel else []
        return Prediction(
            path=source_name(image, index),
            category=category,
            scores={s: float(scored.scores[s][j]) for s in SCORES},
            thresholds={s: t.values[s] for s in SCORES},
            normalised_scores={s: float(t.normalise(s, scored.scores[s][j])) for s in SCORES},
            decision_score=self.config.decision_score,
            pixel_threshold=pixel,
            image_size=size,
            regions=regions,
            anomaly_map=scored.maps[j] if keep_map else None,
            preprocess=pre,
        )

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the model folder atomically: manifest.json, projection and one file per category."""
        self._require_fitted()
        if self.weights_info_ is None:
            self._ensure_backbone()  # the manifest records the weights' sha256
        categories, files = {}, {}
        if self.projection_ is not None:
            files["projection.safetensors"] = {"projection": self.projection_}
        for i, (name, m) in enumerate(sorted(self.categories_.items())):
            file = f"category_{i:03d}.safetensors"
            c = m.calibration
            tensors = {
                "bank": m.bank,
                "bank_source": m.bank_source,
                "prototypes": m.prototypes,
                "mu": torch.from_numpy(c.mu),
                "sigma": torch.from_numpy(c.sigma),
                **{f"threshold_scores_{k}": torch.from_numpy(v) for k, v in m.thresholds.scores.items()},
            }
            if (r := m.calibration_record) is not None:
                tensors.update({f"calibration_{k}": torch.from_numpy(np.asarray(getattr(r, k))) for k in _RECORD_KEYS})
                tensors.update({f"calibration_score_{s}": torch.from_numpy(np.asarray(r.scores[s])) for s in SCORES[1:]})
            files[file] = tensors
            categories[name] = {
                "file": file,
                "bank_size": len(m.bank),
                "lambda": c.lam,
                "thresholds": {s: m.thresholds.values[s] for s in SCORES},
                "pixel_threshold": m.thresholds.values[PIXEL],
                "threshold_calibration": m.thresholds.record(),
                "train_images": m.train_images,
                "warnings": list(c.warnings),
            }
        manifest = {
            "config": asdict(self.config),
            "precision": self.precision,
            "fit_precision": self.fit_precision,
            "fit_runtime": self.runtime,
            "weights": {
                "name": self.config.backbone,
                "sha256": self.weights_info_.sha256,
                "source": self.weights_info_.source,
                "origin": self.weights_info_.origin,
            },
            "categories": categories,
        }
        return write_model(Path(folder), manifest, files)

    @classmethod
    def load(cls, folder: str | Path, **settings) -> Detector:
        """Read a model folder; ``settings`` are runtime options (weights, precision, device, ...)."""
        manifest, files = read_model(Path(folder))
        check_detector_manifest(Path(folder), manifest, SCORES)
        try:
            config = DetectorConfig(**manifest["config"])
        except (TypeError, ConfigError) as e:
            raise ModelFileError(f"{Path(folder) / 'manifest.json'}: field 'config' is not valid ({e}); "
                                 "refit the model, or register its backbone before loading it") from None
        if any(len(files[e["file"]]["mu"]) != len(config.components) for e in manifest["categories"].values()):
            raise ModelFileError(f"{folder}: mu/sigma sizes disagree with the components {config.components} in manifest.json")
        settings.setdefault("precision", manifest["precision"])
        if settings.get("fit_precision") is None:  # refit (--add) in the precision the model was fitted in;
            # models written before fit_precision existed were fitted in their test-time precision
            settings["fit_precision"] = manifest.get("fit_precision", manifest["precision"])
        detector = cls(config, **settings)
        detector.projection_ = files.get("projection.safetensors", {}).get("projection")
        detector.weights_info_ = WeightsInfo(path=None, **manifest["weights"])
        for name, entry in manifest["categories"].items():
            t = files[entry["file"]]
            calibration = StructCalibration(
                components=config.components,
                top_ratio=config.top_ratio,
                distance=config.distance,
                mu=t["mu"].numpy(),
                sigma=t["sigma"].numpy(),
                lam=float(entry["lambda"]),
                warnings=list(entry.get("warnings", [])),
            )
            how = entry["threshold_calibration"]
            thresholds = Thresholds(
                method=how["method"],
                false_reject_rate=float(how["false_reject_rate"]),
                scores={k: t[f"threshold_scores_{k}"].numpy() for k in (*SCORES, PIXEL)},
                values={**{k: float(v) for k, v in entry["thresholds"].items()}, PIXEL: float(entry["pixel_threshold"])},
                set_by=dict(how["set_by"]),
                notes=list(how.get("notes", [])),
            )
            record = None
            if all(k in t for k in _RECORD_TENSORS):
                record = CalibrationRecord(
                    **{k: t[f"calibration_{k}"].numpy() for k in _RECORD_KEYS},
                    scores={"base": t["calibration_base"].numpy(), **{s: t[f"calibration_score_{s}"].numpy() for s in SCORES[1:]}},
                )
            detector.categories_[name] = CategoryModel(
                name, t["bank"], t["bank_source"], t["prototypes"], calibration, thresholds, list(entry["train_images"]),
                record
            )
        return detector


def load_model(folder: str | Path, **settings) -> Detector:
    """A fitted detector from a model folder (see :meth:`Detector.load`)."""
    return Detector.load(folder, **settings)
