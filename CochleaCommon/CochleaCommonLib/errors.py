"""One small family of exceptions whose messages a clinician can act on.

Every error raised on purpose by CochleaToolkit derives from :class:`CochleaError`. The message
always says *what* is wrong (naming the file, node or value) and *what to do about it*, so the
Slicer widget can show it verbatim and the command line can print it without a traceback.
"""

from __future__ import annotations


class CochleaError(Exception):
    """Base class of every error CochleaToolkit raises deliberately."""


class InputFileError(CochleaError):
    """A file is missing, unreadable, corrupt or of an unsupported format."""


class InvalidInputError(CochleaError):
    """A value, image or point list is not usable (2D image, point outside the volume, ...)."""


class ModelWeightsError(CochleaError):
    """Model weights are missing, corrupt (checksum mismatch) or do not match the model."""


class MissingDependencyError(CochleaError):
    """An optional dependency (for example PyTorch) is not installed."""


class OperationCancelled(CochleaError):
    """The user cancelled a long-running operation."""
