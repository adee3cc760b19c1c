"""The registry of architecture families: one module per family, each defining ``FAMILY``.

Adding a family is one module here and one line in ``_MODULES``. The records import neither torch
nor numpy, so reading them costs nothing at start-up.
"""

from __future__ import annotations

import importlib

from ...errors import FormatError, UnsupportedError
from ..family import Family, Layout

# Family modules, imported on first use of the registry; order is the order of listings.
_MODULES = ("gpt2", "llama", "gptneox", "qwen2")

_REGISTRY: dict[str, Family] = {}


def _load() -> dict[str, Family]:
    if not _REGISTRY:
        found = {}
        for mod in _MODULES:
            fam = importlib.import_module(f"{__name__}.{mod}").FAMILY
            if fam.id in found:
                raise RuntimeError(f"family {fam.id!r} registered twice")
            found[fam.id] = fam
        _REGISTRY.update(found)
    return _REGISTRY


def all_families() -> list[Family]:
    return list(_load().values())


def ids() -> list[str]:
    return list(_load())


def get(family_id: str) -> Family:
    fams = _load()
    try:
        return fams[family_id]
    except KeyError:
        raise UnsupportedError(f"unknown architecture {family_id!r}; known: {', '.join(fams)}") from None


def layouts() -> dict[str, Layout]:
    """Every layout of every family, by id."""
    out: dict[str, Layout] = {}
    for fam in all_families():
        for lay in fam.all_layouts:
            if lay.id in out:
                raise RuntimeError(f"layout {lay.id!r} defined twice")
            out[lay.id] = lay
    return out


def format_layout(format_id: str) -> Layout | None:
    """The layout a format's files always hold (the meta format: llama-meta); None for most formats."""
    return next((lay for lay in layouts().values() if lay.format == format_id), None)


def config_layouts() -> list[Layout]:
    """The layouts whose checkpoints carry a config file of their own instead of config.json (Meta's
    params.json), each with its codec (``Layout.config``)."""
    return [lay for lay in layouts().values() if lay.config is not None]


def normalize(arch: str) -> str:
    """The family id for an ``--arch`` spelling; an error listing the known ones otherwise."""
    fams = _load()
    key = arch.strip().lower()
    for fam in fams.values():
        if key == fam.id or key in fam.arch_spellings:
            return fam.id
    for fam in fams.values():
        if arch in fam.architectures or key in fam.model_types:
            return fam.id
    raise UnsupportedError(f"unknown architecture {arch!r}; known: {', '.join(fams)} "
                           "(or give your own module as --arch package.module:factory)")


def of_hf_config(config: dict, where: str = "config.json") -> str | None:
    """The family named by a config.json's ``architectures`` / ``model_type``, None when neither is known."""
    found = set()
    for name in config.get("architectures") or ():
        found.update(f.id for f in all_families() if name in f.architectures)
    mt = config.get("model_type")
    if mt is not None:
        found.update(f.id for f in all_families() if mt in f.model_types)
    if len(found) > 1:
        raise FormatError(f"{where}: 'architectures' {config.get('architectures')} and 'model_type' {mt!r} name "
                          "different architectures; fix the file or pass --arch")
    return found.pop() if found else None


__all__ = ["Family", "all_families", "config_layouts", "format_layout", "get", "ids", "layouts", "normalize", "of_hf_config"]
