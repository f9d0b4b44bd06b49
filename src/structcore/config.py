"""The settings that define a fitted model, checked when they are built."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, replace

from .backbones import backbone_entry
from .errors import ConfigError
from .features import Preprocess
from .maps import POOLINGS
from .scoring import SCORES
from .structure import COMPONENTS, DISTANCES
from .thresholds import THRESHOLD_CALIBRATIONS

CALIBRATIONS = ("in-sample", "leave-one-out", "held-out")


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _int(x) -> bool:
    """An ``int`` that is not a bool (``k=True`` is a mistake, not 1)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that defines a fitted model. Defaults follow the paper (spec.md) except the backbone.

    ``blocks=None`` takes the backbone's default for the weights it loads (:meth:`for_weights`; a fitted
    model stores the blocks it used). Every field is checked when the config is built; ``coreset_size``
    (an absolute bank size) overrides ``coreset_ratio``. ``calibration`` is the split StructCore's
    statistics are fitted on; ``threshold_calibration`` how the decision thresholds are
    (:mod:`structcore.thresholds`).
    """

    backbone: str = "dinov2_vits14"
    resize: int = 448
    crop: int = 392
    blocks: tuple[int, ...] | None = None
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
    threshold_calibration: str = "leave-one-out"
    threshold_folds: int = 5
    false_reject_rate: float = 0.01
    descriptor_on: str = "map"
    routing_prototypes: int = 64
    decision_score: str = "hybrid"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        for name in ("blocks", "components"):
            value = getattr(self, name)
            if value is None and name == "blocks":
                continue
            _check(hasattr(value, "__iter__") and not isinstance(value, str), f"{name} must be a list, got {value!r}")
            set_(name, tuple(value))
        # numbers are checked to be numbers before any comparison (a TypeError would not name the field)
        # and real-valued fields stored as float, so the config always serialises to JSON
        for name in ("coreset_ratio", "sigma", "top_ratio", "lam", "heldout_fraction", "false_reject_rate"):
            value = getattr(self, name)
            optional = name in ("coreset_ratio", "lam")
            _check(_real(value) or (optional and value is None),
                   f"{name} must be a number{' or None' if optional else ''}, got {value!r}")
            if value is not None:
                set_(name, float(value))
        if self.coreset_size is not None:
            set_("coreset_ratio", None)
        for name in ("resize", "crop", "projection_dim", "seed", "coreset_size", "k", "routing_prototypes", "threshold_folds"):
            if _int(value := getattr(self, name)):
                set_(name, int(value))  # numpy integers too, stored as int so the config serialises to JSON
        if self.blocks is not None and all(_int(b) for b in self.blocks):
            set_("blocks", tuple(int(b) for b in self.blocks))
        entry = backbone_entry(self.backbone)
        _check(_int(self.resize), f"resize must be an integer, got {self.resize!r}")
        _check(_int(self.crop), f"crop must be an integer, got {self.crop!r}")
        Preprocess(resize=self.resize, crop=self.crop, patch_size=entry.patch_size)
        if self.blocks is not None:
            _check(len(self.blocks) > 0 and all(_int(b) for b in self.blocks), "blocks must be a non-empty list of block indices")
            _check(all(-entry.depth <= b < entry.depth for b in self.blocks),
                   f"blocks {list(self.blocks)} out of range for {self.backbone} ({entry.depth} blocks: -{entry.depth}..{entry.depth - 1})")
            _check(len({b % entry.depth for b in self.blocks}) == len(self.blocks), f"blocks {list(self.blocks)} name a block twice")
        _check(self.projection_dim is None or (_int(self.projection_dim) and self.projection_dim >= 1),
               f"projection_dim must be a positive integer or None (no projection), got {self.projection_dim!r}")
        _check(_int(self.seed), f"seed must be an integer, got {self.seed!r}")
        _check(self.coreset_ratio is not None or self.coreset_size is not None, "give a coreset_ratio or a coreset_size")
        _check(self.coreset_ratio is None or 0 < self.coreset_ratio <= 1, f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        _check(self.coreset_size is None or (_int(self.coreset_size) and self.coreset_size >= 1),
               f"coreset_size must be a positive integer, got {self.coreset_size!r}")
        _check(_int(self.k) and self.k >= 1, f"k (nearest neighbours) must be a positive integer, got {self.k!r}")
        _check(math.isfinite(self.sigma) and self.sigma >= 0, f"sigma (blur) must be >= 0, got {self.sigma}")
        _check(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check(len(self.components) > 0 and set(self.components) <= set(COMPONENTS) and len(set(self.components)) == len(self.components),
               f"components must be distinct names from {COMPONENTS}, got {self.components}")
        _check(0 < self.top_ratio <= 1, f"top_ratio must be in (0, 1], got {self.top_ratio}")
        _check(self.distance in DISTANCES, f"distance must be one of {DISTANCES}, got {self.distance!r}")
        _check(self.lam is None or (math.isfinite(self.lam) and self.lam >= 0), f"lam must be >= 0 or None (lambda_auto), got {self.lam}")
        _check(self.calibration in CALIBRATIONS, f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        _check(0 < self.heldout_fraction < 1, f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        _check(self.threshold_calibration in THRESHOLD_CALIBRATIONS,
               f"threshold_calibration must be one of {THRESHOLD_CALIBRATIONS}, got {self.threshold_calibration!r}")
        _check(_int(self.threshold_folds) and self.threshold_folds >= 2,
               f"threshold_folds must be an integer >= 2, got {self.threshold_folds!r}")
        _check(0 < self.false_reject_rate < 1, f"false_reject_rate must be in (0, 1), e.g. 0.01; got {self.false_reject_rate}")
        _check(self.descriptor_on in ("map", "grid"), f"descriptor_on must be 'map' or 'grid', got {self.descriptor_on!r}")
        _check(_int(self.routing_prototypes) and self.routing_prototypes >= 1,
               f"routing_prototypes must be a positive integer, got {self.routing_prototypes!r}")
        _check(self.decision_score in SCORES, f"decision_score must be one of {SCORES}, got {self.decision_score!r}")

    def for_weights(self, info) -> DetectorConfig:
        """This config with its blocks named: the backbone's default for the weights ``info`` when ``blocks``
        is None, else unchanged."""
        if self.blocks is not None:
            return self
        return replace(self, blocks=backbone_entry(self.backbone).blocks_for(info))

    @property
    def patch_size(self) -> int:
        return backbone_entry(self.backbone).patch_size

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(resize=self.resize, crop=self.crop, patch_size=self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.crop // self.patch_size
        return side, side
