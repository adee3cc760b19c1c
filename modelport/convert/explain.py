"""Naming the known transform that turns one tensor into another (for ``diff``)."""

from __future__ import annotations

from ..formats.base import TensorSource


def explain_difference(name: str, a, b, a_source: TensorSource, b_source: TensorSource) -> str | None:
    """When torch tensors ``a`` and ``b`` differ but one is a known transform of the other,
    a sentence naming the transform; otherwise None."""
    return None
