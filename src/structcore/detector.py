"""The public detector: fit on good images per category, then score, route and decide.

``Detector.fit`` adds categories one at a time (adding one never refits another);
``Detector.predict`` returns one :class:`Prediction` per image; ``save``/``load`` use a model folder
of a ``manifest.json`` plus safetensors files (see :mod:`structcore.model_io`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import VisionTransformer
from .coreset import coreset_size, greedy_coreset
from .data import iter_batches
from .features import SKIP5, FeatureExtractor, Preprocess, fuse_layers, random_projection, resolve_precision
from .knn import MemoryBank
from .maps import anomaly_maps, pool
from .model_io import read_model, write_model
from .router import route, routing_prototypes
from .structure import COMPONENTS, StructCalibration
from .weights import WeightsInfo, load_backbone

CALIBRATIONS = ("in-sample", "leave-one-out", "held-out")
SCORES = ("base", "struct", "hybrid")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that defines a fitted model. Defaults follow the paper (spec.md) except the backbone."""

    backbone: str = "dinov2_vits14"
    resize: int = 448
    crop: int = 392
    blocks: tuple[int, ...] = SKIP5
    projection_dim: int | None = 512
    seed: int = 42
    coreset_ratio: float | None = 0.01
    coreset_size: int | None = None
    k: int = 5
    sigma: float = 4.0
    pooling: str = "max"
    components: tuple[str, ...] = COMPONENTS
    top_ratio: float = 0.01
    distance: str = "mahalanobis"
    lam: float | None = None
    calibration: str = "in-sample"
    heldout_fraction: float = 0.2
    quantile: float = 0.995
    descriptor_on: str = "map"
    routing_prototypes: int = 64
    decision_score: str = "hybrid"

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.descriptor_on not in ("map", "grid"):
            raise ValueError(f"descriptor_on must be 'map' or 'grid', got {self.descriptor_on!r}")
        if self.decision_score not in SCORES:
            raise ValueError(f"decision_score must be one of {SCORES}, got {self.decision_score!r}")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"threshold quantile must be in (0, 1], got {self.quantile}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"held-out fraction must be in (0, 1), got {self.heldout_fraction}")
        coreset_size(10**6, self.coreset_ratio, self.coreset_size)  # validates the pair
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "components", tuple(self.components))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(resize=self.resize, crop=self.crop)

    @property
    def grid(self) -> tuple[int, int]:
        return self.crop // 14, self.crop // 14


@dataclass
class CategoryModel:
    """What a category keeps after fitting: bank (+ each entry's source image), prototypes, calibration."""

    name: str
    bank: torch.Tensor
    bank_source: torch.Tensor
    prototypes: torch.Tensor
    calibration: StructCalibration
    train_images: list[str]


@dataclass
class Prediction:
    """One scored image: its category, the three scores, the decision, and the anomaly map."""

    path: str | None
    category: str
    scores: dict[str, float]
    thresholds: dict[str, float]
    decision_score: str
    anomaly_map: np.ndarray = field(repr=False)

    @property
    def is_anomalous(self) -> bool:
        return self.scores[self.decision_score] > self.thresholds[self.decision_score]


@dataclass
class ScoredMaps:
    """Maps and image scores of a batch of images for one category."""

    maps: np.ndarray
    scores: dict[str, np.ndarray]


#: Backbone precision for train images unless asked otherwise: the memory bank then is the fp32 pipeline's.
FIT_PRECISION = "fp32"


class NotFittedError(RuntimeError):
    pass


class Detector:
    """StructCore anomaly detector. ``__init__`` only stores settings; the backbone loads on first use.

    ``precision`` is the backbone's for the images scored (``auto``: bf16 where the CPU or GPU has bf16
    matrix units), ``fit_precision`` its precision for the train images: fp32 by default, so the memory
    bank and calibration are the fp32 pipeline's (a bf16 fit picks a different coreset).
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        weights: str | Path | None = None,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        knn_backend: str = "auto",
        num_workers: int = 2,
        progress: bool = True,
        compile: bool = False,
        fit_precision: str | None = None,
    ):
        self.config = config or DetectorConfig()
        self.compile = compile
        self.weights = weights
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.precision = resolve_precision(precision, self.device)
        self.fit_precision = resolve_precision(fit_precision or FIT_PRECISION, self.device)
        self.batch_size = batch_size
        self.knn_backend = knn_backend
        self.num_workers = num_workers
        self.progress = progress
        self.categories_: dict[str, CategoryModel] = {}
        self.fit_timings_: dict[str, dict[str, float]] = {}  # per category: coreset_s, calibration_knn_s
        self.projection_: torch.Tensor | None = None
        self.weights_info_: WeightsInfo | None = None
        self._backbone: VisionTransformer | None = None
        self._extractors: dict[str, FeatureExtractor] = {}  # by precision, sharing one backbone
        self._banks: dict[str, MemoryBank] = {}

    # -- features -------------------------------------------------------------------------------
    def use_backbone(self, backbone: VisionTransformer, info: WeightsInfo):
        """Use an already built backbone instead of loading ``config.backbone``'s weights on first use."""
        if self.weights_info_ is not None and info.sha256 != self.weights_info_.sha256:
            raise RuntimeError(
                f"this model was fitted with {self.config.backbone} weights sha256 {self.weights_info_.sha256}, "
                f"but the weights found now ({info.path}) have sha256 {info.sha256}; pass the original file "
                "with --weights"
            )
        self.weights_info_ = info
        self._ensure_projection(backbone.cfg.embed_dim * len(self.config.blocks))
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
                self._backbone, self.config.blocks, self.projection_, precision, self.device, self.compile
            )
        return self._extractors[precision]

    def _ensure_projection(self, in_dim: int):
        if self.projection_ is None and self.config.projection_dim is not None:
            self.projection_ = random_projection(in_dim, self.config.projection_dim, self.config.seed)
        if self.projection_ is not None and self.projection_.shape[0] != in_dim:
            raise ValueError(f"the model's projection expects {self.projection_.shape[0]} input channels, got {in_dim}")

    def fuse(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Projected features ``[N, P, D]`` from raw block tokens (one ``[N, P, C]`` per config block).

        For callers that cache backbone outputs (the benchmark): same result as :meth:`extract`.
        """
        self._ensure_projection(sum(t.shape[-1] for t in layers))
        return fuse_layers(layers, self.projection_)

    def extract(self, paths: list[Path], desc: str = "features", precision: str | None = None) -> torch.Tensor:
        """Projected patch features ``[N, P, D]`` of image files (decoded in background threads).

        ``precision``: the backbone's, default the test-time ``self.precision`` (:meth:`fit` passes
        ``self.fit_precision``).
        """
        extractor = self.extractor(precision)
        out: torch.Tensor | None = None
        batches = iter_batches(paths, self.config.preprocess, self.batch_size, self.num_workers)
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not self.progress) as bar:
            for indices, images in batches:
                feats = extractor(images).cpu()
                if out is None:
                    out = torch.empty((len(paths), *feats.shape[1:]), dtype=torch.float32)
                out[indices[0] : indices[-1] + 1] = feats
                bar.update(len(indices))
        if out is None:
            raise ValueError("no images to extract features from")
        return out

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, category: str, train_paths: list[Path]) -> CategoryModel:
        """Fit (or refit) one category from its good training images; other categories are untouched."""
        if not train_paths:
            raise ValueError(f"category {category!r} has no training images")
        features = self.extract(train_paths, desc=f"{category}: train features", precision=self.fit_precision)
        return self.fit_features(category, features, [str(p) for p in train_paths])

    def fit_features(self, category: str, features: torch.Tensor, train_images: list[str]) -> CategoryModel:
        """Fit a category from already extracted train-good features ``[N, P, D]``."""
        cfg = self.config
        n = features.shape[0]
        need = {"in-sample": 2, "leave-one-out": 2, "held-out": 3}[cfg.calibration]
        if n < need:
            raise ValueError(
                f"category {category!r} has {n} training image(s); {cfg.calibration} calibration of StructCore "
                f"needs at least {need} (a few dozen give stable thresholds)"
            )
        bank_ids, calib_ids = self.calibration_split(n)
        flat = features[bank_ids].reshape(-1, features.shape[-1])
        source = torch.as_tensor(bank_ids).repeat_interleave(features.shape[1])
        started = time.perf_counter()
        chosen = greedy_coreset(
            flat, coreset_size(len(flat), cfg.coreset_ratio, cfg.coreset_size), cfg.seed, progress=self.progress
        )
        coreset_s = time.perf_counter() - started
        bank = MemoryBank(flat[chosen], source[chosen], self.knn_backend, self.device)
        exclude = calib_ids if cfg.calibration == "leave-one-out" else None
        started = time.perf_counter()
        grids = self.patch_grids(bank, features[calib_ids], exclude)
        self.fit_timings_[category] = {"coreset_s": coreset_s, "calibration_knn_s": time.perf_counter() - started}
        maps = anomaly_maps(grids, (cfg.crop, cfg.crop), cfg.sigma)
        base = pool(maps, cfg.pooling)
        calibration = StructCalibration.fit(
            self.descriptor_input(maps, grids), base, cfg.components, cfg.top_ratio, cfg.distance, cfg.lam, cfg.quantile
        )
        model = CategoryModel(
            name=category,
            bank=bank.entries,
            bank_source=bank.source_image,
            prototypes=routing_prototypes(features.reshape(-1, features.shape[-1]), cfg.routing_prototypes, cfg.seed),
            calibration=calibration,
            train_images=train_images,
        )
        self.categories_[category] = model
        self._banks[category] = bank
        return model

    def calibration_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Images that build the bank and images that calibrate StructCore."""
        everything = np.arange(n)
        if self.config.calibration != "held-out":
            return everything, everything
        order = np.random.default_rng(self.config.seed).permutation(n)
        n_calib = min(n - 1, max(2, round(n * self.config.heldout_fraction)))
        return np.sort(order[n_calib:]), np.sort(order[:n_calib])

    def patch_grids(
        self, bank: MemoryBank, features: torch.Tensor, exclude_images: np.ndarray | None = None
    ) -> torch.Tensor:
        """kNN patch-score grids ``[B, rows, cols]``; ``exclude_images[i]`` is image i's own bank id."""
        rows, cols = self.config.grid
        if exclude_images is None:
            scores = bank.patch_scores(features.reshape(-1, features.shape[-1]), self.config.k)
            return scores.reshape(len(features), rows, cols)
        grids = [bank.patch_scores(f, self.config.k, exclude_image=int(i)) for f, i in zip(features, exclude_images)]
        return torch.stack(grids).reshape(len(features), rows, cols)

    def descriptor_input(self, maps: np.ndarray, grids: torch.Tensor) -> np.ndarray:
        """What phi is computed on: the final maps, or the raw kNN grids (``config.descriptor_on``)."""
        return maps if self.config.descriptor_on == "map" else grids.numpy()

    # -- scoring --------------------------------------------------------------------------------
    def _require_fitted(self, category: str | None = None):
        if not self.categories_:
            raise NotFittedError("This Detector has no fitted category yet. Call fit(category, images) first.")
        if category is not None and category not in self.categories_:
            known = ", ".join(sorted(self.categories_))
            raise KeyError(f"unknown category {category!r}; this model has: {known}")

    def memory_bank(self, category: str) -> MemoryBank:
        """The fitted category's memory bank, ready for kNN queries (built once, then reused)."""
        if category not in self._banks:
            m = self.categories_[category]
            self._banks[category] = MemoryBank(m.bank, m.bank_source, self.knn_backend, self.device)
        return self._banks[category]

    def score_features(self, category: str, features: torch.Tensor) -> ScoredMaps:
        """Maps and base/struct/hybrid scores of features ``[B, P, D]`` against ``category``."""
        self._require_fitted(category)
        cfg = self.config
        grids = self.patch_grids(self.memory_bank(category), features)
        maps = anomaly_maps(grids, (cfg.crop, cfg.crop), cfg.sigma)
        scores = self.categories_[category].calibration.scores(self.descriptor_input(maps, grids), pool(maps, cfg.pooling))
        return ScoredMaps(maps=maps, scores=scores)

    def route(self, features: torch.Tensor) -> list[str]:
        """Routed category of each image's features ``[B, P, D]`` (paper eq. 3-4)."""
        self._require_fitted()
        return route(features, {name: m.prototypes for name, m in self.categories_.items()})

    def predict(self, paths: list[Path], category: str | None = None) -> list[Prediction]:
        """Score image files; with ``category=None`` each image is routed to a category first."""
        self._require_fitted(category)
        predictions: list[Prediction] = []
        for start in range(0, len(paths), self.batch_size * 8):
            chunk = paths[start : start + self.batch_size * 8]
            features = self.extract(chunk, desc="predict")
            categories = [category] * len(chunk) if category else self.route(features)
            slots: list[Prediction | None] = [None] * len(chunk)
            for name in dict.fromkeys(categories):
                rows = [i for i, c in enumerate(categories) if c == name]
                scored = self.score_features(name, features[rows])
                thresholds = self.categories_[name].calibration.thresholds
                for j, i in enumerate(rows):
                    slots[i] = Prediction(
                        path=str(chunk[i]),
                        category=name,
                        scores={s: float(scored.scores[s][j]) for s in SCORES},
                        thresholds=dict(thresholds),
                        decision_score=self.config.decision_score,
                        anomaly_map=scored.maps[j],
                    )
            predictions.extend(slots)
        return predictions

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the model folder atomically: manifest.json, projection and one file per category."""
        self._require_fitted()
        self._ensure_backbone()  # the manifest records the weights' sha256
        categories, files = {}, {}
        if self.projection_ is not None:
            files["projection.safetensors"] = {"projection": self.projection_}
        for i, (name, m) in enumerate(sorted(self.categories_.items())):
            file = f"category_{i:03d}.safetensors"
            c = m.calibration
            files[file] = {
                "bank": m.bank,
                "bank_source": m.bank_source,
                "prototypes": m.prototypes,
                "mu": torch.from_numpy(c.mu),
                "sigma": torch.from_numpy(c.sigma),
            }
            categories[name] = {
                "file": file,
                "bank_size": len(m.bank),
                "lambda": c.lam,
                "thresholds": c.thresholds,
                "train_images": m.train_images,
            }
        manifest = {
            "config": asdict(self.config),
            "precision": self.precision,
            "fit_precision": self.fit_precision,
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
        config = DetectorConfig(**manifest["config"])
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
                thresholds={k: float(v) for k, v in entry["thresholds"].items()},
            )
            detector.categories_[name] = CategoryModel(
                name, t["bank"], t["bank_source"], t["prototypes"], calibration, list(entry["train_images"])
            )
        return detector
