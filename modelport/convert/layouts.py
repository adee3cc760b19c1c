"""Which layout a conversion writes, and the config that gives the model dimensions it needs.

The mapping itself (rule tables, derived inverses, the lazy :class:`LayoutSource`) is
:mod:`modelport.models.layouts`; this module decides the target layout from the target format and
``--layout``, and adapts the source once.
"""

from __future__ import annotations

from ..errors import LayoutError
from ..formats.base import Format, Options, TensorSource
from ..models.layouts import (FORMAT_LAYOUTS, LAYOUTS, LayoutSource, align, detect_layout, forward_patterns,  # noqa: F401
                              hub_of, reverse_patterns, to_layout)
from ..models.sources import read_config_file

# Formats that always hold the hub layout of the source's family.
HUB_FORMATS = frozenset({"hf"})


def target_layout(source_layout, target: Format | str, layout: str | None) -> str | None:
    """The layout id the target format wants (``layout`` is ``--layout``), or None to keep the source's."""
    tid = getattr(target, "id", target)
    implied = FORMAT_LAYOUTS.get(tid)
    if implied is None and tid in HUB_FORMATS and source_layout is not None:
        implied = hub_of(source_layout.family)
    if layout and implied and layout != implied:
        raise LayoutError(f"format {tid} holds layout {implied}; --layout {layout} cannot be written as {tid} "
                          "(leave --layout out, or pick a format such as safetensors)")
    return layout or implied


def adapt(source: TensorSource, target_format: Format | str, options: Options | None = None,
          config: dict | None = None) -> TensorSource:
    """``source`` in the layout that ``target_format`` (or ``options.layout``) wants: the source
    itself when no change is needed, else a lazy :class:`LayoutSource`. The model dimensions come
    from the source's config, else ``config`` (already read), else the file ``options.config``."""
    options = options or Options()
    tid = getattr(target_format, "id", target_format)
    if not options.layout and tid not in FORMAT_LAYOUTS and tid not in HUB_FORMATS:
        return source     # the target keeps the source's layout: nothing to detect (50 ms of name matching)
    want = target_layout(detect_layout(source), target_format, options.layout)
    if want is None:
        return source
    if source.config is None and config is None and options.config is not None:
        config = read_config_file(options.config, source)
    return to_layout(source, want, source.config if source.config is not None else config)


__all__ = ["LAYOUTS", "LayoutSource", "adapt", "align", "detect_layout", "target_layout"]
