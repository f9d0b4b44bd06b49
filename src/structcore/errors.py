"""The errors structcore raises: one base class, one subclass per kind of problem.

Each message names the file, folder, option or category concerned and what to do about it. The
subclasses also derive from the builtin a caller would expect (``ValueError`` for bad input,
``KeyError`` for an unknown category), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class StructcoreError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(StructcoreError, ValueError):
    """A setting (a DetectorConfig field, a runtime option) that is out of range or unknown."""


class DataError(StructcoreError, ValueError):
    """A problem with the input data (a file, a folder or a data set layout)."""


class ModelFileError(StructcoreError, ValueError):
    """A model folder that cannot be read or written: names the folder or file and what is wrong."""


class WeightsError(StructcoreError, RuntimeError):
    """Backbone weights that cannot be found, read or do not match the model."""


class NotFittedError(StructcoreError, RuntimeError):
    """A detector used before ``fit``."""


class LockedError(StructcoreError, RuntimeError):
    """Another process is writing the same model folder or output folder (the message names its pid)."""


class CalibrationWarning(UserWarning):
    """A category's calibration is degenerate (too few or too similar good images); the model records it."""


class UnknownCategoryError(StructcoreError, KeyError):
    """A category the model does not have; the message lists the ones it has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
