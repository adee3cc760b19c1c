"""Which family a checkpoint belongs to, and its config when no config.json came with it.

Detection reads, in order: the source's ``config.json`` (``architectures`` / ``model_type``), a
Meta ``params.json`` beside the weights, and the tensor names (each family's ``signatures``).
Inference reads the dimensions that shapes reveal (layers, widths, vocabulary, GQA ratio, biases,
tying, GPT-2's position table) and fills what they cannot (head count, norm epsilon, rope_theta,
rotary fraction …) with the defaults each record states in ``assumed_defaults``, listing those keys
in the result's ``_modelport_assumed``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..formats.base import TensorSource
from . import families
from .config import config_from_hf, family_of_hf
from .family import Weights
from .families import llama


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


def meta_params(source: TensorSource) -> dict | None:
    """The ``params.json`` of a Meta checkpoint: the source's own, or the file beside it."""
    params = getattr(source, "params", None)
    if isinstance(params, dict):
        return params
    path = Path(source.path)
    candidate = path / "params.json" if path.is_dir() else path.parent / "params.json"
    if candidate.is_file():
        from ..formats._untrusted import read_json_file
        from ..formats.meta import check_params

        return check_params(read_json_file(candidate, "params.json"), candidate)
    return None


def _all_names(source: TensorSource) -> list[str]:
    return list(source.names()) + list(source.aliases())


def detect_family(source: TensorSource) -> str | None:
    """The family id of ``source``, or None when nothing names one."""
    if source.config is not None:
        fam = family_of_hf(source.config, f"{source.path}: config.json")
        if fam is not None:
            return fam
    fam = family_from_names(_all_names(source))
    if fam is None and meta_params(source) is not None:
        return llama.FAMILY.id
    return fam


def config_for_source(source: TensorSource, arch: str | None = None) -> Any | None:
    """The model config for ``source``: config.json, else params.json, else inferred (see ``assumed``)."""
    if source.config is not None and (family_of_hf(source.config) is not None or arch):
        return config_from_hf(source.config, arch, f"{source.path}: config.json")
    params = meta_params(source)
    if params is not None and (arch in (None, llama.FAMILY.id)):
        return llama.config_of_meta_source(params, source, f"{source.path}: params.json")
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
