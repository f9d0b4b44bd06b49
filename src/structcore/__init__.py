"""structcore: training-free visual anomaly detection with StructCore image scoring."""

__version__ = "0.1.0"
