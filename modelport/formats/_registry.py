"""Where format adapters register: below the adapters, which import it, and below the package's
lookups (``modelport.formats``), which import the adapters."""

from __future__ import annotations

from .base import Format

_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if fmt.id in _REGISTRY:
        raise RuntimeError(f"format {fmt.id!r} registered twice")
    _REGISTRY[fmt.id] = fmt
    return fmt
