"""One family of errors for what the user can fix.

Anything raised as a :class:`ModelportError` reaches the user as one line on
stderr and a documented exit code; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Something the user can fix: the message says what failed, where, and what to do."""

    exit_code = 2


class FormatError(ModelportError):
    """A file is unreadable, corrupt, truncated, or not of the format it claims."""


class UnsafeContentError(ModelportError):
    """A file asks to run or import code that modelport will not trust."""


class UnsupportedError(ModelportError):
    """A format, conversion, dtype or option that modelport cannot handle."""


class DestinationExistsError(ModelportError):
    """The output path exists and --force was not given."""


class MissingDependencyError(ModelportError):
    """An optional package needed for this step is not installed."""


class LayoutError(ModelportError):
    """Tensor names or shapes do not fit the layout or architecture asked for."""


class DifferenceFound(ModelportError):
    """A comparison found a difference (diff, parity): exit 1."""

    exit_code = 1

