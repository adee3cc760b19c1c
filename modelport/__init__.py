"""modelport: convert neural-network models between formats and prove the conversion correct."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ModelportError  # noqa: E402
from .formats import Options, open  # noqa: E402,A004
from .convert import convert  # noqa: E402  (the function; rebinds the subpackage's name)
from .diff import diff  # noqa: E402
from .inspect import inspect  # noqa: E402

__all__ = ["ModelportError", "Options", "convert", "diff", "inspect", "open", "__version__"]
