"""What modelport knows about one architecture family, as one record.

A :class:`Family` holds everything code asks about an architecture: its reference model class, its
config dataclass and the config.json keys that spell each field, the Hugging Face base-model prefix,
the tensor names that identify it, the hub (Hugging Face) tensor shapes, its tied pair, the buffers
it recomputes, its other layouts as rule tables, the head sizes to try when only widths are known,
and how to infer a config from bare weights. Each family is one module in
:mod:`modelport.models.families`; code reads the record and never matches a family's tensor names
itself.

This module imports neither torch nor numpy: conversions that only move bytes read records too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ..errors import LayoutError

# Head sizes tried, in order, when only q/k widths are known: the sizes published checkpoints use.
HEAD_DIMS = (128, 64, 80, 96, 256, 32)
# Smaller sizes that tiny test models use; tried after HEAD_DIMS where a guess is only a hint (diff).
SMALL_HEAD_DIMS = (160, 112, 16, 8)


@dataclass(frozen=True)
class Rule:
    """A name of a layout (``{bid}`` stands for a block number) and the hub name it maps to,
    optionally through a transform of :mod:`modelport.models.transforms` whose arguments name
    model dimensions (``(("n_heads", "n_kv_heads"),)`` passes the model's n_kv_heads as n_heads).
    A rule whose hub is None marks a tensor the hub does not keep (a recomputed buffer)."""

    name: str
    hub: str | None
    transform: str | None = None
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ConfigCodec:
    """The config file a layout's checkpoints carry in their own spelling instead of config.json
    (Meta's ``params.json``), and its translation through the family's config dataclass. The family
    record names the functions; code asks the layout for its codec and never names the family."""

    file: str                                        # its name beside the weights ("params.json")
    check: Callable[[Any, Any], dict]                # (parsed JSON, where) -> the checked file; FormatError naming the key
    is_native: Callable[[dict], bool]                # True for a dict in this spelling rather than config.json's
    config_of: Callable[[dict, Any, Any], Any]       # (the file, source, where) -> the family's config; the source's
                                                     # weights give what the file leaves out (vocabulary, tying)
    to_native: Callable[[dict | None, dict, Any], dict]   # (config.json, source metadata, where) -> the file to write
    carried: str | None = None                       # a config.json written beside it, read back while it describes
                                                     # the same model (it holds what the file cannot: token ids …)


@dataclass(frozen=True)
class Layout:
    id: str
    family: str
    rules: tuple[Rule, ...]
    # A tensor (hub name) and the orientation its weight has in this layout: "wide" when rows <
    # columns, "tall" otherwise. Tells apart layouts that share every name (HF GPT-2 Conv1D weights
    # and nanoGPT's nn.Linear weights).
    orientation: tuple[str, str] | None = None
    description: str = ""
    format: str | None = None      # the format whose files always hold this layout (llama-meta: meta)
    config: ConfigCodec | None = None   # the config file its checkpoints carry instead of config.json

    @property
    def is_hub(self) -> bool:
        return all(r.hub in (r.name, None) and r.transform is None for r in self.rules)


class Weights:
    """Names and shapes of a bare checkpoint, for inferring a config: shapes by name with the
    family's base-model prefix removed (aliases included), and the stored names as they are."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], names: set[str], where: str):
        self.shapes, self.names, self.where = shapes, names, where

    def get(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise LayoutError(f"{self.where}: no tensor {name!r}, which the architecture needs to infer its config")
        return self.shapes[name]

    def n_layers(self, pattern: str) -> int:
        idx = {int(m.group(1)) for n in self.shapes if (m := re.match(pattern, n))}
        return max(idx) + 1 if idx else 0

    def __contains__(self, name: str) -> bool:
        return name in self.shapes


def head_dim_of(widths: list[int], candidates: tuple[int, ...] = HEAD_DIMS) -> int:
    """The first candidate head size that divides every width (their gcd when none does)."""
    g = math.gcd(*widths)
    for hd in candidates:
        if g % hd == 0:
            return hd
    return g


@dataclass(frozen=True)
class RotaryRows:
    """Tensors whose rows follow the rotary layout, for ``diff`` to recognise a missed permutation:
    a name pattern, the dimension that counts their heads, and the layout the name belongs to."""

    pattern: str
    heads: str                     # n_heads | n_kv_heads
    side: str                      # "hf" (halves rotated) | "meta" (adjacent pairs)


@dataclass(frozen=True)
class FusedQKV:
    """A tensor that fuses q, k and v in the family's own order, for ``diff`` to recognise one fused in
    another order: a name pattern, the transform (of :mod:`modelport.models.transforms`, taking
    ``n_heads``) from q|k|v blocks to the family's order, and that order in words."""

    pattern: str
    transform: str                 # reorder_qkv_blocked_to_neox
    order: str                     # "GPT-NeoX fuses q, k, v per head"


@dataclass(frozen=True)
class Family:
    id: str
    model: str                                  # "module:Class" of the reference model (imports torch)
    config: type                                # the config dataclass
    aliases: Mapping[str, tuple[str, ...]]      # field -> config.json keys, newest spelling first
    from_values: Callable[[dict, str], Any]     # aliased values (see config_base.read_aliases) -> config
    dims: Callable[[dict], dict]                # config.json -> the dimensions rules and shapes name
    infer: Callable[[Weights], Any]             # bare weights -> config, assumed values listed
    model_types: tuple[str, ...]                # config.json model_type spellings
    architectures: tuple[str, ...]              # config.json architectures spellings
    prefix: str                                 # base-model prefix of the hub names
    signatures: tuple[str, ...]                 # a tensor name matching one names this family …
    hub_shapes: Mapping[str, tuple[str, ...]]   # hub name -> its shape in model dimensions
    tied: tuple[str, str]                       # (output, input) embedding hub names, tied by config
    arch_spellings: tuple[str, ...] = ()        # other --arch spellings
    anti_signatures: tuple[str, ...] = ()       # … unless a name matches one of these
    refines: str | None = None                  # a family whose signatures this one's files also match
    unsupported_unless: Mapping[str, tuple] = field(default_factory=dict)   # config key -> allowed values
    hub_dropped: tuple[str, ...] = ()           # hub-layout buffers of older checkpoints, recomputed
    hub_orientation: tuple[str, str] | None = None
    layouts: tuple[Layout, ...] = ()            # the other layouts, as rule tables to the hub
    derived_buffers: tuple[str, ...] = ()       # patterns of buffers the model recomputes (skipped on load)
    renames: Mapping[str, str] = field(default_factory=dict)   # other transformers spellings -> ours
    head_dims: tuple[int, ...] = HEAD_DIMS
    rotary_rows: tuple[RotaryRows, ...] = ()
    fused_qkv: tuple[FusedQKV, ...] = ()        # fused q/k/v tensors in the family's own order
    assumed_defaults: Mapping[str, Any] = field(default_factory=dict)   # what weights cannot reveal
    description: str = ""

    @property
    def hub(self) -> Layout:
        rules = tuple(Rule(n, n) for n in self.hub_shapes) + tuple(Rule(n, None) for n in self.hub_dropped)
        return Layout(f"{self.id}-hf", self.id, rules, self.hub_orientation,
                      f"Hugging Face transformers layout ({self.id})")

    @property
    def blocks(self) -> str | None:
        """Where the hub layout keeps its blocks (``transformer.h``): what ``{bid}`` follows."""
        found = {name.split(".{bid}")[0] for name in self.hub_shapes if ".{bid}" in name}
        return found.pop() if len(found) == 1 else None

    @property
    def all_layouts(self) -> tuple[Layout, ...]:
        return (self.hub, *self.layouts)

    def model_class(self):
        """The reference model's class (imports torch)."""
        import importlib

        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    def tied_pairs(self) -> list[tuple[str, str]]:
        """The tied (output, input) pair under the names of every layout of the family."""
        out = [self.tied]
        for lay in self.layouts:
            by_hub = {r.hub: r.name for r in lay.rules if r.hub is not None}
            pair = (by_hub.get(self.tied[0]), by_hub.get(self.tied[1]))
            if None not in pair and pair not in out:
                out.append(pair)
        return out


def frozen(d: dict) -> MappingProxyType:
    return MappingProxyType(dict(d))
