"""What every family's config is built from: the config.json alias reader, the shared checks, rotary
scaling, and :func:`from_record` (a config.json read through one family's record, with no registry).

Family records import this module; :mod:`modelport.models.config`, the boundary that picks the family
from the registry, imports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import FormatError, UnsupportedError

ASSUMED_KEY = "_modelport_assumed"

# Assumed config.json keys that do not change what a model computes (they only bound the sequence length, or
# describe a sliding window that is off: modelport refuses models that use one).
# Every other guess (head counts, norm epsilon, rope theta, activation …) changes the outputs, and is
# never written or used unless the caller accepts it.
NOT_MATH = frozenset({"max_position_embeddings", "n_positions", "sliding_window", "max_window_layers"})

# Activation spellings of config.json that the reference models implement.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish")

_MISSING = object()


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling: ``linear`` (positions divided by ``factor``) or Llama 3.1 ``llama3``."""

    rope_type: str                          # "linear" | "llama3"
    factor: float
    low_freq_factor: float = 1.0            # llama3 only; Meta's apply_scaling uses 1
    high_freq_factor: float = 4.0           # llama3 only; Meta's apply_scaling uses 4
    original_max_position_embeddings: int = 8192   # llama3 only; Meta's old_context_len

    def to_dict(self) -> dict:
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {"rope_type": self.rope_type, "factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}


class MultiHeadConfig:
    """The head shape of a config without grouped-query attention: every head has its own keys and values."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads


def from_record(record, config: dict, where: str = "config.json"):
    """The config dataclass of ``record``'s family from a config.json dict already known to be that family's."""
    for key, allowed in record.unsupported_unless.items():
        if key in config and config[key] not in allowed:
            raise UnsupportedError(f"{where}: {key}={config[key]!r} is not supported for {record.id}")
    return record.from_values(read_aliases(config, record.aliases, where), where)


def _lookup(config: dict, dotted: str):
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def read_aliases(config: dict, aliases: dict[str, tuple[str, ...]], where: str) -> dict:
    out = {}
    for name, keys in aliases.items():
        seen = [(k, _lookup(config, k)) for k in keys]
        seen = [(k, val) for k, val in seen if val is not _MISSING]
        if name != "rope_scaling":
            seen = [(k, val) for k, val in seen if val is not None]    # null means "the default"
        if not seen:
            continue
        first_key, first = seen[0]
        for k, val in seen[1:]:
            if name == "rope_scaling" or val == first:
                continue
            raise FormatError(f"{where}: {first_key}={first!r} contradicts {k}={val!r}; remove one")
        if name == "rope_scaling":
            first = _merge_rope(seen, where)
        out[name] = first
    return out


def _merge_rope(seen: list, where: str):
    """rope_parameters (5.x) and rope_scaling (4.x) describe the same scaling; keep whichever is set."""
    dicts = [(k, v) for k, v in seen if isinstance(v, dict)]
    scaling = [(k, _scaling_part(v)) for k, v in dicts]
    scaling = [(k, v) for k, v in scaling if v]
    for k, v in scaling[1:]:
        if v != scaling[0][1]:
            raise FormatError(f"{where}: {scaling[0][0]}={scaling[0][1]!r} contradicts {k}={v!r}; remove one")
    return scaling[0][1] if scaling else None


def _scaling_part(d: dict) -> dict | None:
    d = {k: v for k, v in d.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = d.get("rope_type", d.get("type", "default"))
    if "type" in d and "rope_type" in d and d["type"] != d["rope_type"]:
        raise FormatError(f"rope scaling names two types: type={d['type']!r}, rope_type={d['rope_type']!r}")
    d.pop("type", None)
    d["rope_type"] = kind
    return None if kind == "default" else d


def rope_scaling(d: dict | None, where: str, allowed: tuple[str, ...]) -> RopeScaling | None:
    if not d:
        return None
    kind = d.get("rope_type")
    if kind not in allowed:
        raise UnsupportedError(f"{where}: rope scaling of type {kind!r} is not supported"
                               + (f"; supported: {', '.join(allowed)}" if allowed else ""))
    try:
        factor = float(d["factor"])
        if kind == "linear":
            return RopeScaling("linear", factor)
        return RopeScaling("llama3", factor, float(d["low_freq_factor"]), float(d["high_freq_factor"]),
                           int(d["original_max_position_embeddings"]))
    except KeyError as exc:
        raise FormatError(f"{where}: rope scaling of type {kind!r} lacks {exc.args[0]!r}") from None


def require(values: dict, names: tuple[str, ...], aliases: dict, where: str) -> None:
    for name in names:
        if values.get(name) is None:
            raise FormatError(f"{where}: missing {aliases[name][0]!r}")


def divisible(a: int, b: int, what_a: str, what_b: str, where: str) -> None:
    if b <= 0 or a % b:
        raise FormatError(f"{where}: {what_a} {a} is not divisible by {what_b} {b}")


def check_common(cfg, where: str) -> None:
    for f in fields(cfg):
        val = getattr(cfg, f.name)
        if f.name in ("n_layers", "n_heads", "n_kv_heads", "dim", "ffn_dim", "vocab_size", "head_dim",
                      "max_positions") and (not isinstance(val, int) or isinstance(val, bool) or val <= 0):
            raise FormatError(f"{where}: {f.name} must be a positive integer, got {val!r}")
        if f.name in ("norm_eps", "rope_theta") and (not isinstance(val, (int, float)) or isinstance(val, bool)
                                                     or not math.isfinite(val) or val <= 0):
            raise FormatError(f"{where}: {f.name} must be a positive number, got {val!r}")
    if cfg.activation not in ACTIVATIONS:
        raise UnsupportedError(f"{where}: activation {cfg.activation!r} is not supported; supported: {', '.join(ACTIVATIONS)}")


def with_assumed_key(out: dict, assumed: tuple[str, ...]) -> dict:
    if assumed:
        out[ASSUMED_KEY] = list(assumed)
    return out
