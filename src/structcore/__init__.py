"""structcore: training-free visual anomaly detection with StructCore image scoring.

The public surface::

    from structcore import Detector, DetectorConfig, Prediction, load_model, StructcoreError
"""

__version__ = "0.1.0"

from .backbones import Backbone, register_backbone  # noqa: E402
from .config import DetectorConfig  # noqa: E402
from .detector import Detector, Prediction, load_model  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    DataError,
    ModelFileError,
    NotFittedError,
    StructcoreError,
    UnknownCategoryError,
    WeightsError,
)
from .structure import StructCalibration  # noqa: E402

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
    "StructcoreError",
    "UnknownCategoryError",
    "WeightsError",
    "__version__",
    "load_model",
    "register_backbone",
]
