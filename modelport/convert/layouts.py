"""Layout mappings between a family's hub (Hugging Face) layout and its other layouts."""

from __future__ import annotations

from ..formats.base import Format, Options, TensorSource


def adapt(source: TensorSource, target: Format, options: Options) -> TensorSource:
    """The source as the target format expects its names and tensors (identity for now)."""
    return source
