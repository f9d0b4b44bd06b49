"""structcore: training-free visual anomaly detection with StructCore image scoring.

The public surface::

    from structcore import Detector, DetectorConfig, Prediction, load_model, StructcoreError, StructCoreScorer
"""

from .backbones import Backbone, register_backbone
from .config import DetectorConfig
from .detector import Detector, Prediction, load_model
from .errors import (
    ConfigError,
    DataError,
    ModelFileError,
    NotFittedError,
    StructcoreError,
    UnknownCategoryError,
    WeightsError,
)
from .rescore import StructCoreScorer
from .structure import StructCalibration
from .version import __version__

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "Detector",
    "DetectorConfig",
    "ModelFileError",
    "NotFittedError",
    "Prediction",
    "StructCalibration",
    "StructCoreScorer",
    "StructcoreError",
    "UnknownCategoryError",
    "WeightsError",
    "__version__",
    "load_model",
    "register_backbone",
]
