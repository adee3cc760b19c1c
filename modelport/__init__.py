"""modelport: convert neural-network models between formats and prove the conversion correct."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ModelportError  # noqa: E402
from .formats import Options, open  # noqa: E402,A004


def convert(src, dst, **kwargs):
    """Convert ``src`` to ``dst``; see :func:`modelport.convert.convert`."""
    from .convert import convert as _convert

    return _convert(src, dst, **kwargs)


def load_model(path, arch=None, device="cpu", dtype=None, **kwargs):
    """A runnable model for a checkpoint; see :func:`modelport.models.loader.load_model`."""
    from .models.loader import load_model as _load_model

    return _load_model(path, arch, device, dtype, **kwargs)


def diff(a, b, **kwargs):
    """Compare two checkpoints tensor by tensor; see :func:`modelport.diff.diff`."""
    from .diff import diff as _diff

    return _diff(a, b, **kwargs)


__all__ = ["ModelportError", "Options", "convert", "diff", "load_model", "open", "__version__"]
