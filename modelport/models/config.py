"""One config dataclass per architecture family, built at one boundary.

A config reaches modelport as a Hugging Face ``config.json`` (transformers 4.x or 5.x spelling) or as
Meta's ``params.json``. :func:`config_from_hf` and :func:`config_from_meta_params` are the only places
that read those dicts; everything downstream uses the named dimensions below
(``n_layers, n_heads, n_kv_heads, head_dim, dim, ffn_dim, vocab_size``).

Each family has ONE alias table: field -> the config.json keys that spell it, newest first. A dotted
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
from dataclasses import dataclass, field, fields, replace
from typing import Any, Union

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


@dataclass(frozen=True)
class GPT2Config:
    n_layers: int
    n_heads: int
    dim: int
    vocab_size: int
    ffn_dim: int                            # n_inner; null in config.json means 4 * dim
    max_positions: int = 1024               # n_positions: rows of the learned position table
    norm_eps: float = 1e-5
    activation: str = "gelu_new"            # GPT-2's tanh approximation of GELU
    scale_attn_weights: bool = True         # divide scores by sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False   # also divide by layer index + 1
    tie_word_embeddings: bool = True        # lm_head shares wte
    assumed: tuple[str, ...] = field(default=(), compare=False)

    family = "gpt2"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    def to_hf_config(self, spelling: int = 4) -> dict:
        out = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_layer": self.n_layers, "n_head": self.n_heads, "n_embd": self.dim, "vocab_size": self.vocab_size,
            "n_inner": self.ffn_dim, "n_positions": self.max_positions, "layer_norm_epsilon": self.norm_eps,
            "activation_function": self.activation, "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        return _with_assumed(out, self.assumed)


@dataclass(frozen=True)
class LlamaConfig:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    dim: int
    ffn_dim: int
    vocab_size: int
    head_dim: int                           # usually dim // n_heads; config.json may set it apart
    norm_eps: float = 1e-6                  # transformers' default; Meta's checkpoints use 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_positions: int = 2048               # only bounds generation length; no weight depends on it
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"
    assumed: tuple[str, ...] = field(default=(), compare=False)

    family = "llama"

    def to_hf_config(self, spelling: int = 4) -> dict:
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "hidden_size": self.dim, "intermediate_size": self.ffn_dim,
            "vocab_size": self.vocab_size, "head_dim": self.head_dim, "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_positions, "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias, "hidden_act": self.activation,
        }
        scaling = self.rope_scaling.to_dict() if self.rope_scaling else None
        if spelling == 5:
            out["rope_parameters"] = {"rope_theta": self.rope_theta, **(scaling or {"rope_type": "default"})}
        else:
            out["rope_theta"] = self.rope_theta
            out["rope_scaling"] = scaling
        return _with_assumed(out, self.assumed)

    def to_meta_params(self) -> dict:
        """Meta's ``params.json`` for this config; refuses what Meta's format cannot express."""
        if self.head_dim * self.n_heads != self.dim:
            raise UnsupportedError(f"params.json cannot express head_dim {self.head_dim} != dim {self.dim} / n_heads {self.n_heads}")
        if self.attention_bias or self.mlp_bias or self.activation not in ("silu", "swish"):
            raise UnsupportedError("params.json cannot express attention/mlp biases or an activation other than silu")
        out: dict[str, Any] = {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads}
        if self.n_kv_heads != self.n_heads:
            out["n_kv_heads"] = self.n_kv_heads
        out["vocab_size"] = self.vocab_size
        out["multiple_of"], multiplier = meta_ffn_params(self.dim, self.ffn_dim)
        if multiplier is not None:
            out["ffn_dim_multiplier"] = multiplier
        out["norm_eps"] = self.norm_eps
        out["rope_theta"] = self.rope_theta
        if self.rope_scaling is not None:
            s = self.rope_scaling
            if s.rope_type != "llama3":
                raise UnsupportedError(f"params.json cannot express rope scaling of type {s.rope_type!r}")
            out["use_scaled_rope"] = True
            if s.factor != 8.0:
                out["rope_scaling_factor"] = s.factor
            if (s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings) != (1.0, 4.0, 8192):
                out.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                           original_max_position_embeddings=s.original_max_position_embeddings)
        # No max_seq_len: Meta's Llama.build passes it itself, and its params.json files never carry it.
        return out


@dataclass(frozen=True)
class NeoXConfig:
    n_layers: int
    n_heads: int
    dim: int
    ffn_dim: int
    vocab_size: int
    rotary_pct: float = 0.25                # fraction of each head's dims that rotate (transformers' default)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_positions: int = 2048
    use_parallel_residual: bool = True      # x + attn(ln1(x)) + mlp(ln2(x)) rather than sequential
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    activation: str = "gelu"                # exact (erf) GELU
    assumed: tuple[str, ...] = field(default=(), compare=False)

    family = "gptneox"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def rotary_dims(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def to_hf_config(self, spelling: int = 4) -> dict:
        out: dict[str, Any] = {
            "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads, "hidden_size": self.dim,
            "intermediate_size": self.ffn_dim, "vocab_size": self.vocab_size, "layer_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_positions, "use_parallel_residual": self.use_parallel_residual,
            "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": self.attention_bias,
            "hidden_act": self.activation,
        }
        if spelling == 5:
            out["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta,
                                      "partial_rotary_factor": self.rotary_pct}
        else:
            out["rotary_pct"] = self.rotary_pct          # the spelling of published NeoX configs
            out["rotary_emb_base"] = self.rope_theta
        return _with_assumed(out, self.assumed)


ModelConfig = Union[GPT2Config, LlamaConfig, NeoXConfig]

# -- the boundary: one alias table per family ------------------------------------------------------
# field -> config.json keys, newest spelling first. Fields absent here are derived (see the builders).
GPT2_ALIASES: dict[str, tuple[str, ...]] = {
    "n_layers": ("n_layer", "num_hidden_layers"),
    "n_heads": ("n_head", "num_attention_heads"),
    "dim": ("n_embd", "hidden_size"),
    "vocab_size": ("vocab_size",),
    "ffn_dim": ("n_inner",),
    "max_positions": ("n_positions", "max_position_embeddings"),
    "norm_eps": ("layer_norm_epsilon",),
    "activation": ("activation_function",),
    "scale_attn_weights": ("scale_attn_weights",),
    "scale_attn_by_inverse_layer_idx": ("scale_attn_by_inverse_layer_idx",),
    "tie_word_embeddings": ("tie_word_embeddings",),
}

LLAMA_ALIASES: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers",),
    "n_heads": ("num_attention_heads",),
    "n_kv_heads": ("num_key_value_heads",),
    "dim": ("hidden_size",),
    "ffn_dim": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "head_dim": ("head_dim",),
    "norm_eps": ("rms_norm_eps",),
    "rope_theta": ("rope_parameters.rope_theta", "rope_theta"),
    "rope_scaling": ("rope_parameters", "rope_scaling"),
    "max_positions": ("max_position_embeddings",),
    "tie_word_embeddings": ("tie_word_embeddings",),
    "attention_bias": ("attention_bias",),
    "mlp_bias": ("mlp_bias",),
    "activation": ("hidden_act",),
}

NEOX_ALIASES: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers",),
    "n_heads": ("num_attention_heads",),
    "dim": ("hidden_size",),
    "ffn_dim": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "rotary_pct": ("rope_parameters.partial_rotary_factor", "partial_rotary_factor", "rotary_pct"),
    "rope_theta": ("rope_parameters.rope_theta", "rope_theta", "rotary_emb_base"),
    "rope_scaling": ("rope_parameters", "rope_scaling"),
    "norm_eps": ("layer_norm_eps",),
    "max_positions": ("max_position_embeddings",),
    "use_parallel_residual": ("use_parallel_residual",),
    "tie_word_embeddings": ("tie_word_embeddings",),
    "attention_bias": ("attention_bias",),
    "activation": ("hidden_act",),
}

# config.json keys that change the computation in ways the reference models do not implement:
# key -> the value (or values) they may take.
_UNSUPPORTED_UNLESS: dict[str, dict[str, tuple]] = {
    "gpt2": {"add_cross_attention": (False, None)},
    "llama": {"pretraining_tp": (1, None)},
    "gptneox": {},
}

# Families by id, with the model_type and architectures spellings that name them in config.json.
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"model_types": ("gpt2",), "architectures": ("GPT2LMHeadModel", "GPT2Model"), "config": GPT2Config},
    "llama": {"model_types": ("llama",), "architectures": ("LlamaForCausalLM", "LlamaModel"), "config": LlamaConfig},
    "gptneox": {"model_types": ("gpt_neox",), "architectures": ("GPTNeoXForCausalLM", "GPTNeoXModel"), "config": NeoXConfig},
}

# Spellings accepted for --arch, beside the family ids.
ARCH_ALIASES = {"gpt_neox": "gptneox", "gpt-neox": "gptneox", "neox": "gptneox", "opencalm": "gptneox",
                "llama2": "llama", "llama3": "llama"}


def known_archs() -> list[str]:
    return list(FAMILIES)


def normalize_arch(arch: str) -> str:
    """The family id for an ``--arch`` spelling; an error listing the known ones otherwise."""
    key = arch.strip().lower()
    key = ARCH_ALIASES.get(key, key)
    if key in FAMILIES:
        return key
    for fam, spec in FAMILIES.items():
        if arch in spec["architectures"] or key in spec["model_types"]:
            return fam
    raise UnsupportedError(f"unknown architecture {arch!r}; known: {', '.join(FAMILIES)} "
                           "(or give your own module as --arch package.module:factory)")


def family_of_hf(config: dict, where: str = "config.json") -> str | None:
    """The family named by a config.json's ``architectures`` / ``model_type``, None when neither is known."""
    found = set()
    for name in config.get("architectures") or ():
        for fam, spec in FAMILIES.items():
            if name in spec["architectures"]:
                found.add(fam)
    mt = config.get("model_type")
    if mt is not None:
        for fam, spec in FAMILIES.items():
            if mt in spec["model_types"]:
                found.add(fam)
    if len(found) > 1:
        raise FormatError(f"{where}: 'architectures' {config.get('architectures')} and 'model_type' {mt!r} name "
                          "different architectures; fix the file or pass --arch")
    return found.pop() if found else None


def config_from_hf(config: dict, arch: str | None = None, where: str = "config.json") -> ModelConfig:
    """The family's config dataclass from a config.json dict (transformers 4.x or 5.x spelling)."""
    if not isinstance(config, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(config).__name__}")
    named = family_of_hf(config, where)
    fam = normalize_arch(arch) if arch else named
    if named is not None and fam != named:
        raise LayoutError(f"{where}: --arch {arch} contradicts the config, which is {named}; drop one")
    if fam is None:
        named = config.get("architectures") or config.get("model_type")
        raise UnsupportedError(f"{where}: unknown architecture {named!r}; known: {', '.join(FAMILIES)} (pass --arch to choose one)")
    for key, allowed in _UNSUPPORTED_UNLESS[fam].items():
        if key in config and config[key] not in allowed:
            raise UnsupportedError(f"{where}: {key}={config[key]!r} is not supported for {fam}")
    return {"gpt2": _gpt2_from_hf, "llama": _llama_from_hf, "gptneox": _neox_from_hf}[fam](config, where)


def _gpt2_from_hf(config: dict, where: str) -> GPT2Config:
    v = _read_aliases(config, GPT2_ALIASES, where)
    _require(v, ("n_layers", "n_heads", "dim", "vocab_size"), GPT2_ALIASES, where)
    if v.get("ffn_dim") is None:
        v["ffn_dim"] = 4 * v["dim"]
    cfg = GPT2Config(**v)
    _check_common(cfg, where)
    _divisible(cfg.dim, cfg.n_heads, "hidden size", "heads", where)
    return cfg


def _llama_from_hf(config: dict, where: str) -> LlamaConfig:
    v = _read_aliases(config, LLAMA_ALIASES, where)
    _require(v, ("n_layers", "n_heads", "dim", "ffn_dim", "vocab_size"), LLAMA_ALIASES, where)
    if v.get("n_kv_heads") is None:
        v["n_kv_heads"] = v["n_heads"]
    if v.get("head_dim") is None:
        _divisible(v["dim"], v["n_heads"], "hidden size", "heads", where)
        v["head_dim"] = v["dim"] // v["n_heads"]
    v["rope_scaling"] = _rope_scaling(v.get("rope_scaling"), where, allowed=("linear", "llama3"))
    if v.get("rope_theta") is None:
        v.pop("rope_theta", None)
    cfg = LlamaConfig(**v)
    _check_common(cfg, where)
    _divisible(cfg.n_heads, cfg.n_kv_heads, "heads", "key/value heads", where)
    return cfg


def _neox_from_hf(config: dict, where: str) -> NeoXConfig:
    v = _read_aliases(config, NEOX_ALIASES, where)
    _require(v, ("n_layers", "n_heads", "dim", "ffn_dim", "vocab_size"), NEOX_ALIASES, where)
    if _rope_scaling(v.pop("rope_scaling", None), where, allowed=()) is not None:
        raise UnsupportedError(f"{where}: rope scaling is not supported for gptneox")
    for key in ("rotary_pct", "rope_theta"):
        if v.get(key) is None:
            v.pop(key, None)
    cfg = NeoXConfig(**v)
    _check_common(cfg, where)
    _divisible(cfg.dim, cfg.n_heads, "hidden size", "heads", where)
    if not 0.0 < cfg.rotary_pct <= 1.0:
        raise FormatError(f"{where}: rotary fraction {cfg.rotary_pct} must lie in (0, 1]")
    if cfg.rotary_dims % 2:
        raise FormatError(f"{where}: {cfg.rotary_dims} rotary dims per head (head_dim {cfg.head_dim} x {cfg.rotary_pct}) must be even")
    return cfg


def config_from_meta_params(params: dict, vocab_size: int | None = None, where: str = "params.json") -> LlamaConfig:
    """A LlamaConfig from Meta's ``params.json`` (Llama 1, 2, 3).

    ``vocab_size`` comes from the embedding's shape when params.json says -1 (Llama 1/2) and must agree
    with it otherwise. Keys unknown to Meta's ModelArgs are refused, as ``ModelArgs(**params)`` would.
    """
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
             "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "low_freq_factor",
             "high_freq_factor", "original_max_position_embeddings", "max_seq_len", "max_batch_size"}
    if not isinstance(params, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - known)
    if unknown:
        raise FormatError(f"{where}: unknown keys {unknown}; Meta's ModelArgs knows only {sorted(known)}")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise FormatError(f"{where}: missing {key!r}")
    dim, n_heads = params["dim"], params["n_heads"]
    _divisible(dim, n_heads, "dim", "n_heads", where)
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab < 0:
        if vocab_size is None:
            raise FormatError(f"{where}: vocab_size is {vocab}; it is read from tok_embeddings.weight, which was not given")
        vocab = vocab_size
    elif vocab_size is not None and vocab_size != vocab:
        raise FormatError(f"{where}: vocab_size {vocab} contradicts the embedding's {vocab_size} rows")
    assumed = []
    scaling = None
    if params.get("use_scaled_rope"):
        scaling = RopeScaling("llama3", float(params.get("rope_scaling_factor") or 8.0),
                              float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0)),
                              int(params.get("original_max_position_embeddings", 8192)))
    if "max_seq_len" in params:
        max_positions = int(params["max_seq_len"])
    else:
        # Meta's code takes max_seq_len at run time; 4096 for Llama 2, 8192 for Llama 3.
        max_positions = 8192 if params.get("rope_theta", 10000.0) >= 500000.0 else 4096
        assumed.append("max_position_embeddings")
    cfg = LlamaConfig(
        n_layers=params["n_layers"], n_heads=n_heads, n_kv_heads=params.get("n_kv_heads") or n_heads, dim=dim,
        ffn_dim=meta_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        vocab_size=vocab, head_dim=dim // n_heads, norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling=scaling, max_positions=max_positions,
        tie_word_embeddings=False, assumed=tuple(assumed))
    _check_common(cfg, where)
    _divisible(cfg.n_heads, cfg.n_kv_heads, "n_heads", "n_kv_heads", where)
    return cfg


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The SwiGLU hidden size Meta's FeedForward derives from params.json."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# (multiple_of, ffn_dim_multiplier) in Meta's published params.json files (Llama 1, 2, 3, 3.1, 3.2).
_PUBLISHED_FFN = ((256, None), (1024, 1.3), (4096, 1.3), (4096, 1.0), (256, 1.5), (1024, 1.5), (4096, 1.2))


def meta_ffn_params(dim: int, ffn_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that reproduce ``ffn_dim`` exactly under :func:`meta_ffn_dim`: no
    multiplier if one works (largest power-of-two multiple_of first), else the multiplier with fewest decimals."""
    for m, f in _PUBLISHED_FFN:    # the pairs Meta's own params.json files use, so they come back as they were
        if meta_ffn_dim(dim, m, f) == ffn_dim:
            return m, f
    pows = [1 << k for k in range(20, -1, -1) if ffn_dim > 0 and ffn_dim % (1 << k) == 0]
    for m in pows:
        if meta_ffn_dim(dim, m, None) == ffn_dim:
            return m, None
    base = int(2 * (4 * dim) / 3)
    for decimals in range(1, 7):
        scale = 10 ** decimals
        for m in pows:
            lo = ffn_dim - m + 1                  # int(f * base) must land in [lo, ffn_dim]
            first = -(-lo * scale // base)
            for k in range(first, first + 3):
                f = round(k / scale, decimals)
                if meta_ffn_dim(dim, m, f) == ffn_dim:
                    return m, f
    raise UnsupportedError(f"intermediate_size {ffn_dim} with hidden_size {dim} cannot be written as Meta's "
                           "multiple_of / ffn_dim_multiplier; this model has no Meta params.json equivalent")


# -- helpers ---------------------------------------------------------------------------------------
def _lookup(config: dict, dotted: str):
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _read_aliases(config: dict, aliases: dict[str, tuple[str, ...]], where: str) -> dict:
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


def _rope_scaling(d: dict | None, where: str, allowed: tuple[str, ...]) -> RopeScaling | None:
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


def _require(values: dict, names: tuple[str, ...], aliases: dict, where: str) -> None:
    for name in names:
        if values.get(name) is None:
            raise FormatError(f"{where}: missing {aliases[name][0]!r}")


def _divisible(a: int, b: int, what_a: str, what_b: str, where: str) -> None:
    if b <= 0 or a % b:
        raise FormatError(f"{where}: {what_a} {a} is not divisible by {what_b} {b}")


def _check_common(cfg, where: str) -> None:
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


def _with_assumed(out: dict, assumed: tuple[str, ...]) -> dict:
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


def with_assumed(cfg: ModelConfig, assumed: list[str]) -> ModelConfig:
    """``cfg`` with ``assumed`` (config.json keys filled by stated defaults) recorded."""
    return replace(cfg, assumed=tuple(dict.fromkeys([*cfg.assumed, *assumed])))


__all__ = ["ASSUMED_KEY", "FAMILIES", "NOT_MATH", "math_guesses", "refuse_guesses", "GPT2Config", "LlamaConfig", "ModelConfig", "NeoXConfig", "RopeScaling",
           "config_from_hf", "config_from_meta_params", "family_of_hf", "known_archs", "meta_ffn_dim", "meta_ffn_params",
           "normalize_arch", "with_assumed"]
