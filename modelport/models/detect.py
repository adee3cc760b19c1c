"""Which family a checkpoint belongs to, and its config when no config.json came with it.

Detection reads, in order: the source's ``config.json`` (``architectures`` / ``model_type``), the
tensor names (each family's ``signatures``), and a layout's own config file held by the source or
lying beside the weights (a Meta ``params.json``: the family of the layout whose codec reads it).
Inference reads the dimensions that shapes reveal (layers, widths, vocabulary, GQA ratio, biases,
tying, GPT-2's position table) and fills what they cannot (head count, norm epsilon, rope_theta,
rotary fraction …) with the defaults each record states in ``assumed_defaults``, listing those keys
in the result's ``_modelport_assumed``.
"""

from __future__ import annotations

import re
from typing import Any

from ..formats.base import TensorSource
from . import families
from .config import config_from_hf, family_of_hf
from .family import Weights
from .sources import native_config


def family_from_names(names) -> str | None:
    names = list(names)
    found = set()
    for fam in families.all_families():
        if any(re.search(p, n) for p in fam.signatures for n in names) and \
                not any(re.search(p, n) for p in fam.anti_signatures for n in names):
            found.add(fam.id)
    # a family whose files also match another's signatures wins over that one
    found -= {families.get(f).refines for f in found}
    # Names of two families (a merged or multi-model file) name none: the caller asks for --arch.
    return found.pop() if len(found) == 1 else None


def _all_names(source: TensorSource) -> list[str]:
    return list(source.names()) + list(source.aliases())


def detect_family(source: TensorSource) -> str | None:
    """The family id of ``source``, or None when nothing names one."""
    if source.config is not None:
        fam = family_of_hf(source.config, f"{source.path}: config.json")
        if fam is not None:
            return fam
    fam = family_from_names(_all_names(source))
    if fam is None:
        found = native_config(source, beside=True)
        if found is not None:
            return found[0].family
    return fam


def config_for_source(source: TensorSource, arch: str | None = None) -> Any | None:
    """The model config for ``source``: config.json, else a layout's own config file (params.json), else
    inferred (see ``assumed``)."""
    if source.config is not None and (family_of_hf(source.config) is not None or arch):
        return config_from_hf(source.config, arch, f"{source.path}: config.json")
    found = native_config(source, beside=True)
    if found is not None and arch in (None, found[0].family):
        layout, native = found
        return layout.config.config_of(native, source, f"{source.path}: {layout.config.file}")
    return infer_model_config(source, arch)


def infer_model_config(source: TensorSource, arch: str | None = None) -> Any | None:
    """A config from tensor names and shapes (HF layout), or None when the family is unknown."""
    fam = arch or family_from_names(_all_names(source))
    if fam is None:
        return None
    record = families.get(fam)
    shapes = {}
    aliases = source.aliases()
    for name in _all_names(source):
        key = name[len(record.prefix):] if name.startswith(record.prefix) else name
        shapes[key] = tuple(source.info(aliases.get(name, name)).shape)
    return record.infer(Weights(shapes, set(source.names()), str(source.path)))
