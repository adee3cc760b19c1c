"""A config checked against the weights it is meant to describe, before any model is built.

A config.json is as untrusted as the weights beside it: ``n_layer: 1000000`` over a one-block file
would build a million blocks before the strict loader noticed. :func:`reconcile` compares, from names
and shapes alone (no torch, nothing built), the number of blocks the weights hold, and the shape each
hub tensor present should have under the config (hidden size, vocabulary, position table, feed-forward
width …), and refuses the first disagreement naming the config key, its value and the value the
weights imply. :func:`reconcile_generic` does the same for directories transformers runs (any
architecture) from the common spellings of block lists and embeddings.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import LayoutError
from ..formats.base import TensorSource
from . import families


def _key_for(record, dim: str, config: dict | None) -> str:
    """The config.json key that states dimension ``dim`` (the spelling the given config uses, if any)."""
    keys = record.aliases.get(dim) or next((ks for ks in record.aliases.values() if dim in ks), (dim,))
    if config:
        for k in keys:
            if k in config:
                return k
    return keys[0]


def _refuse(where: str, key: str, value, implied, what: str) -> LayoutError:
    return LayoutError(f"{where}: the config's {key} = {value!r} contradicts the weights, which imply {key} = "
                       f"{implied} ({what}); correct {key} in the config (or pass --config)")


def _shapes(source: TensorSource) -> dict[str, tuple[int, ...]]:
    aliases = source.aliases()
    names = list(source.names()) + list(aliases)
    return {n: tuple(source.info(aliases.get(n, n)).shape) for n in names}


def block_count(names, blocks: str) -> tuple[int, int]:
    """(distinct block numbers, highest + 1) of names under ``blocks`` (``transformer.h``), with or without
    the part before its last component's parent (a base model's names)."""
    tail = blocks.split(".")[-1]
    pattern = re.compile(rf"(?:^|\.){re.escape(tail)}\.(\d{{1,9}})\.")
    idx = {int(m.group(1)) for n in names if (m := pattern.search(n))}
    return len(idx), (max(idx) + 1 if idx else 0)


def reconcile(source: TensorSource, cfg: Any, config: dict | None = None) -> None:
    """Refuse ``cfg`` (a family config dataclass) when the source's names and shapes (hub layout) disagree
    with it. ``config``: the config.json dict it came from, to name keys as that file spells them."""
    record = families.get(cfg.family)
    where = str(source.path)
    shapes = _shapes(source)
    blocks = record.blocks
    if blocks is not None:
        count, highest = block_count(shapes, blocks)
        if count and cfg.n_layers != count:
            key = _key_for(record, "n_layers", config)
            raise _refuse(where, key, cfg.n_layers, count,
                          f"they hold {count} blocks under {blocks}" + (f", numbered up to {highest - 1}"
                                                                         if highest != count else ""))
    dims = record.dims(cfg.to_hf_config())
    prefix = record.prefix
    for template, dim_names in record.hub_shapes.items():
        name = template.replace("{bid}", "0")
        have = shapes.get(name)
        if have is None and name.startswith(prefix):
            have = shapes.get(name[len(prefix):])
        if have is None or any(d not in dims for d in dim_names):
            continue
        want = tuple(dims[d] for d in dim_names)
        if have == want:
            continue
        if len(have) != len(want):
            raise LayoutError(f"{where}: tensor {name!r} has shape {list(have)}; the {cfg.family} config needs "
                              f"{list(want)}; check the config (--config) or the layout")
        for axis, (h, w, d) in enumerate(zip(have, want, dim_names)):
            if h != w:
                keyed = d in record.aliases or any(d in ks for ks in record.aliases.values())
                if keyed:
                    key = _key_for(record, d, config)
                    raise _refuse(where, key, w, h, f"tensor {name!r} has shape {list(have)}")
                raise LayoutError(f"{where}: tensor {name!r} has shape {list(have)}; the {cfg.family} config gives "
                                  f"{list(want)} ({d} = {w}); check the config's sizes (--config)")


# config.json spellings transformers' models use, for any architecture
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_BLOCK_LISTS = ("layers", "layer", "h", "blocks")
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
_POSITIONS = ("position_embeddings.weight", "wpe.weight")     # OPT-style tables with an offset are not checked


def _int(config: dict, key: str):
    v = config.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def reconcile_generic(source: TensorSource, config: dict, where: str) -> None:
    """For a directory of any architecture: block count, vocabulary, hidden size and position table of
    ``config`` against the weights' names and shapes."""
    shapes = _shapes(source)
    layers_key = next((k for k in _LAYER_KEYS if _int(config, k) is not None), None)
    if layers_key is not None:
        counts = [block_count(shapes, b) for b in _BLOCK_LISTS]
        count = max(c for c, _ in counts)
        if count and config[layers_key] != count:
            raise _refuse(where, layers_key, config[layers_key], count, f"they hold {count} numbered blocks")
    emb = next((s for n, s in shapes.items() if n.endswith(_EMBEDDINGS) and len(s) == 2), None)
    if emb is not None:
        if _int(config, "vocab_size") is not None and config["vocab_size"] != emb[0]:
            raise _refuse(where, "vocab_size", config["vocab_size"], emb[0], f"the token embedding is {list(emb)}")
        hidden_key = next((k for k in _HIDDEN_KEYS if _int(config, k) is not None), None)
        projected = any(k in config for k in ("embedding_size", "word_embed_proj_dim", "project_in"))
        if hidden_key is not None and not projected and config[hidden_key] != emb[1]:
            raise _refuse(where, hidden_key, config[hidden_key], emb[1], f"the token embedding is {list(emb)}")
    pos = next((s for n, s in shapes.items() if n.endswith(_POSITIONS) and len(s) == 2), None)
    for key in ("max_position_embeddings", "n_positions"):
        if pos is not None and _int(config, key) is not None and config[key] != pos[0]:
            raise _refuse(where, key, config[key], pos[0], f"the position table is {list(pos)}")


__all__ = ["block_count", "reconcile", "reconcile_generic"]
