"""modelport: convert neural-network models between formats and prove the conversion correct."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ModelportError  # noqa: E402
from .formats import Options  # noqa: E402
from .models.sources import open_source as open  # noqa: E402,A001
from .convert import convert  # noqa: E402  (the function; rebinds the subpackage's name)
from .diff import diff  # noqa: E402
from .inspect import inspect  # noqa: E402


def load_model(path, arch=None, device="cpu", dtype=None, **kwargs):
    """A runnable model for a checkpoint; see :func:`modelport.models.loader.load_model` (imports torch)."""
    from .models.loader import load_model as _load_model

    return _load_model(path, arch, device, dtype, **kwargs)


__all__ = ["ModelportError", "Options", "convert", "diff", "inspect", "load_model", "open", "__version__"]
