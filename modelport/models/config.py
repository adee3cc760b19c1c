"""One config dataclass per architecture family, built at one boundary.

A config reaches modelport as a Hugging Face ``config.json`` (transformers 4.x or 5.x spelling) or as
Meta's ``params.json``. :func:`config_from_hf` builds the family's config dataclass (defined with the
family's record in :mod:`modelport.models.families`) from a config.json; everything downstream uses
the named dimensions (``n_layers, n_heads, n_kv_heads, head_dim, dim, ffn_dim, vocab_size``).

Each family has ONE alias table (in its record): field -> the config.json keys that spell it, newest first. A dotted
key reads inside a nested dict (``rope_parameters.rope_theta`` is how transformers 5.x writes what 4.x
wrote as top-level ``rope_theta``). When two spellings are present and disagree, the config is refused.

``to_hf_config()`` writes the transformers 4.x spelling by default, which transformers 4.x reads
natively and 5.x converts on load; ``to_hf_config(spelling=5)`` writes ``rope_parameters``.

Values that the source could not give (a bare state dict, a ``params.json`` without ``max_seq_len``)
are filled with the defaults stated on each field and listed in ``assumed`` (config.json keys); the HF
config dict carries that list as ``_modelport_assumed`` so a writer can print it and drop the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import FormatError, LayoutError, UnsupportedError

ASSUMED_KEY = "_modelport_assumed"

# Assumed config.json keys that do not change what a model computes (they only bound the sequence length).
# Every other guess (head counts, norm epsilon, rope theta, activation …) changes the outputs, and is
# never written or used unless the caller accepts it.
NOT_MATH = frozenset({"max_position_embeddings", "n_positions"})

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


# -- the boundary ----------------------------------------------------------------------------------
def known_archs() -> list[str]:
    from .families import ids

    return ids()


def normalize_arch(arch: str) -> str:
    """The family id for an ``--arch`` spelling; an error listing the known ones otherwise."""
    from .families import normalize

    return normalize(arch)


def family_of_hf(config: dict, where: str = "config.json") -> str | None:
    """The family named by a config.json's ``architectures`` / ``model_type``, None when neither is known."""
    from .families import of_hf_config

    return of_hf_config(config, where)


def config_from_hf(config: dict, arch: str | None = None, where: str = "config.json"):
    """The family's config dataclass from a config.json dict (transformers 4.x or 5.x spelling)."""
    from . import families

    if not isinstance(config, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(config).__name__}")
    named = family_of_hf(config, where)
    fam = normalize_arch(arch) if arch else named
    if named is not None and fam != named:
        raise LayoutError(f"{where}: --arch {arch} contradicts the config, which is {named}; drop one")
    if fam is None:
        named = config.get("architectures") or config.get("model_type")
        raise UnsupportedError(f"{where}: unknown architecture {named!r}; known: {', '.join(known_archs())} "
                               "(pass --arch to choose one)")
    record = families.get(fam)
    for key, allowed in record.unsupported_unless.items():
        if key in config and config[key] not in allowed:
            raise UnsupportedError(f"{where}: {key}={config[key]!r} is not supported for {fam}")
    return record.from_values(read_aliases(config, record.aliases, where), where)


# -- helpers ---------------------------------------------------------------------------------------
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


def math_guesses(config: dict) -> dict[str, Any]:
    """{key: guessed value} for the assumed keys of an HF config dict that change the model's outputs."""
    return {k: config.get(k) for k in config.get(ASSUMED_KEY) or () if k not in NOT_MATH}


def refuse_guesses(config: dict, where: str, recorded: str = "in the output's metadata") -> None:
    """ConfigNeededError listing the values a config guessed that change the model's math, if any."""
    from ..errors import ConfigNeededError, opt

    guesses = math_guesses(config)
    if guesses:
        listed = ", ".join(f"{k} (would guess {v!r})" for k, v in guesses.items())
        raise ConfigNeededError(
            f"{where}: the weights do not reveal values that change the model's outputs: {listed}; pass "
            f"{opt('config', repr('config.json'), 'FILE')} stating them, or {opt('assume_config')} to accept the guesses "
            f"(they are then recorded {recorded})")


# Config classes and Meta's params.json live with their family's record; importable from here too.
_MOVED = {"GPT2Config": "gpt2", "LlamaConfig": "llama", "NeoXConfig": "gptneox", "config_from_meta_params": "llama",
          "meta_ffn_dim": "llama", "meta_ffn_params": "llama"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.families.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ASSUMED_KEY", "NOT_MATH", "math_guesses", "refuse_guesses", "GPT2Config", "LlamaConfig", "NeoXConfig", "RopeScaling", "config_from_hf",
           "config_from_meta_params", "family_of_hf", "known_archs", "meta_ffn_dim", "meta_ffn_params", "normalize_arch"]
