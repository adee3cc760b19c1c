"""Reference architectures and the knowledge of which weights belong to which family."""

from __future__ import annotations

from ..formats.base import TensorSource


def infer_config(source: TensorSource) -> dict | None:
    """An HF ``config.json`` for ``source`` inferred from tensor names and shapes, or None."""
    return None


def detect_arch(source: TensorSource) -> str | None:
    """The architecture family of ``source`` (gpt2, llama, gptneox), or None when unknown."""
    return None
