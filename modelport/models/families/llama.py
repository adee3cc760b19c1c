"""Llama 1/2/3: the family record, its config, Meta's layout and params.json (the reference model
is :mod:`modelport.models.llama`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import FormatError, LayoutError, UnsupportedError
from ...formats.meta import HF_CONFIG, check_params, is_llama3
from ..config_base import RopeScaling, check_common, divisible, from_record, require, rope_scaling, with_assumed_key
from ..family import ConfigCodec, Family, Layout, RotaryRows, Rule, Weights, frozen, head_dim_of


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

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    def to_hf_config(self, spelling: int = 4) -> dict:
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "hidden_size": self.dim, "intermediate_size": self.ffn_dim,
            "vocab_size": self.vocab_size, "head_dim": self.head_dim, "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_positions, "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias, "hidden_act": self.activation,
        }
        rope_entries(out, self.rope_theta, self.rope_scaling, spelling)
        return with_assumed_key(out, self.assumed)

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


def rope_entries(out: dict, theta: float, scaling: RopeScaling | None, spelling: int) -> None:
    """rope_theta and rope scaling in the transformers 4.x spelling, or 5.x's ``rope_parameters``."""
    as_dict = scaling.to_dict() if scaling else None
    if spelling == 5:
        out["rope_parameters"] = {"rope_theta": theta, **(as_dict or {"rope_type": "default"})}
    else:
        out["rope_theta"] = theta
        out["rope_scaling"] = as_dict


ALIASES = {
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


def from_values(v: dict, where: str, config_class=LlamaConfig):
    """A Llama-shaped config from aliased values (Qwen2 builds its own config class through this)."""
    require(v, ("n_layers", "n_heads", "dim", "ffn_dim", "vocab_size"), ALIASES, where)
    if v.get("n_kv_heads") is None:
        v["n_kv_heads"] = v["n_heads"]
    if v.get("head_dim") is None:
        divisible(v["dim"], v["n_heads"], "hidden size", "heads", where)
        v["head_dim"] = v["dim"] // v["n_heads"]
    v["rope_scaling"] = rope_scaling(v.get("rope_scaling"), where, allowed=("linear", "llama3"))
    if v.get("rope_theta") is None:
        v.pop("rope_theta", None)
    cfg = config_class(**v)
    check_common(cfg, where)
    divisible(cfg.n_heads, cfg.n_kv_heads, "heads", "key/value heads", where)
    return cfg


def dims(c: dict) -> dict:
    d: dict = {"dim": c.get("hidden_size"), "n_heads": c.get("num_attention_heads"), "vocab_size": c.get("vocab_size")}
    d["n_kv_heads"] = c.get("num_key_value_heads") or d["n_heads"]
    d["ffn_dim"] = c.get("intermediate_size")
    if d["dim"] and d["n_heads"]:
        head_dim = c.get("head_dim") or d["dim"] // d["n_heads"]
        d["head_dim"], d["q_dim"], d["kv_dim"] = head_dim, head_dim * d["n_heads"], head_dim * d["n_kv_heads"]
    return {k: v for k, v in d.items() if v is not None}


ASSUMED = {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "hidden_act": "silu",
           "rope_scaling": None}


def infer(w: Weights, config_class=LlamaConfig, assumed: dict = ASSUMED):
    vocab, dim = w.get("embed_tokens.weight")
    q_rows = w.get("layers.0.self_attn.q_proj.weight")[0]
    k_rows = w.get("layers.0.self_attn.k_proj.weight")[0]
    ffn = w.get("layers.0.mlp.gate_proj.weight")[0]
    if q_rows % k_rows:
        raise LayoutError(f"{w.where}: q_proj has {q_rows} rows, not a multiple of k_proj's {k_rows}")
    head_dim = head_dim_of([q_rows, k_rows])
    # a Llama 3 vocabulary (128256 entries): rope_theta 500000 is the better guess (for Llama, not for the
    # Qwen2 record, which infers through here)
    theta = 500000.0 if config_class is LlamaConfig and is_llama3({"vocab_size": vocab}) else assumed["rope_theta"]
    kw = dict(n_layers=w.n_layers(r"layers\.(\d+)\."), n_heads=q_rows // head_dim, n_kv_heads=k_rows // head_dim,
              dim=dim, ffn_dim=ffn, vocab_size=vocab, head_dim=head_dim, norm_eps=assumed["rms_norm_eps"],
              rope_theta=theta, max_positions=assumed["max_position_embeddings"],
              tie_word_embeddings="lm_head.weight" not in w.names,
              mlp_bias="layers.0.mlp.gate_proj.bias" in w, activation=assumed["hidden_act"])
    if config_class is LlamaConfig:
        kw["attention_bias"] = "layers.0.self_attn.q_proj.bias" in w
    cfg = config_class(**kw)
    return replace(cfg, assumed=("num_attention_heads", "num_key_value_heads", "head_dim", *assumed))


# -- Meta's params.json ---------------------------------------------------------------------------
def config_from_meta_params(params: dict, vocab_size: int | None = None, where: str = "params.json") -> LlamaConfig:
    """A LlamaConfig from Meta's ``params.json`` (Llama 1, 2, 3).

    ``vocab_size`` comes from the embedding's shape when params.json says -1 (Llama 1/2) and must agree
    with it otherwise. Keys unknown to Meta's ModelArgs are refused, as ``ModelArgs(**params)`` would.
    """
    check_params(params, where)
    dim, n_heads = params["dim"], params["n_heads"]
    divisible(dim, n_heads, "dim", "n_heads", where)
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
        max_positions = 8192 if is_llama3(params, vocab) else 4096
        assumed.append("max_position_embeddings")
    cfg = LlamaConfig(
        n_layers=params["n_layers"], n_heads=n_heads, n_kv_heads=params.get("n_kv_heads") or n_heads, dim=dim,
        ffn_dim=meta_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        vocab_size=vocab, head_dim=dim // n_heads, norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling=scaling, max_positions=max_positions,
        tie_word_embeddings=False, assumed=tuple(assumed))
    check_common(cfg, where)
    divisible(cfg.n_heads, cfg.n_kv_heads, "n_heads", "n_kv_heads", where)
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


def _read_hf(config: dict, where) -> LlamaConfig:
    """A config.json read as Llama's through this record (not the registry, which imports this module);
    one whose model_type (or, without one, architectures) names something else is refused."""
    named = config.get("model_type")
    archs = config.get("architectures") or ()
    ours = named in FAMILY.model_types if named is not None else \
        not archs or (isinstance(archs, list) and any(a in FAMILY.architectures for a in archs))
    if not ours:
        raise LayoutError(f"{where}: the config describes {named or archs!r}, not Llama; Meta's params.json holds Llama models only")
    return from_record(FAMILY, config, str(where))


def params_for(config: dict | None, metadata: dict, where) -> dict:
    """The params.json to write for a model with HF ``config``: the one it came with (kept in its
    metadata under ``meta.params``) while that still describes the model, else one built from it."""
    import json

    from ...formats.meta import PARAMS_KEY

    if config is None:
        raise UnsupportedError(f"{where}: writing a Meta checkpoint needs the model's config; pass --config config.json")
    target = _read_hf(config, where)
    stored = (metadata or {}).get(PARAMS_KEY)
    if stored:
        try:
            params = json.loads(stored)
            again = config_from_meta_params(params, target.vocab_size, str(where))
        except (json.JSONDecodeError, FormatError, UnsupportedError, TypeError):
            params = again = None
        # max positions and tying are not in params.json: they cannot make it stale
        if again is not None and replace(again, max_positions=target.max_positions,
                                         tie_word_embeddings=target.tie_word_embeddings) == target:
            return params
    return target.to_meta_params()


def is_params(config: dict) -> bool:
    """True for a Meta params.json (rather than an HF config.json)."""
    return isinstance(config, dict) and "dim" in config and "n_layers" in config and "hidden_size" not in config


def vocab_rows(source) -> int | None:
    """Rows of the input embedding under any of the family's layouts (base-model names included)."""
    names = set(source.names())
    for _, emb in FAMILY.tied_pairs():
        for name in (emb, emb.removeprefix(FAMILY.prefix)):
            if name in names:
                return source.info(name).shape[0]
    return None


def config_of_meta_source(params: dict, source, where) -> LlamaConfig:
    """The config of a Meta-layout source from its params.json (or one given with --config): the
    vocabulary read from the embedding where params.json says -1, tied when there is no output."""
    names = set(source.names())
    tied = not any(out in names for out, _ in FAMILY.tied_pairs())
    return replace(config_from_meta_params(params, vocab_rows(source), str(where)), tie_word_embeddings=tied)


def hf_config_from_meta_source(params: dict, source, where) -> dict:
    """:func:`config_of_meta_source` as a config.json dict."""
    return config_of_meta_source(params, source, where).to_hf_config()


# params.json: the config file of Meta's layout, read and written through LlamaConfig.
PARAMS = ConfigCodec(file="params.json", check=check_params, is_native=is_params, config_of=config_of_meta_source,
                     to_native=params_for, carried=HF_CONFIG)


HUB_SHAPES = {
    "model.embed_tokens.weight": ("vocab_size", "dim"),
    "model.norm.weight": ("dim",),
    "lm_head.weight": ("vocab_size", "dim"),
    "model.layers.{bid}.self_attn.q_proj.weight": ("q_dim", "dim"),
    "model.layers.{bid}.self_attn.k_proj.weight": ("kv_dim", "dim"),
    "model.layers.{bid}.self_attn.v_proj.weight": ("kv_dim", "dim"),
    "model.layers.{bid}.self_attn.o_proj.weight": ("dim", "q_dim"),
    "model.layers.{bid}.mlp.gate_proj.weight": ("ffn_dim", "dim"),
    "model.layers.{bid}.mlp.up_proj.weight": ("ffn_dim", "dim"),
    "model.layers.{bid}.mlp.down_proj.weight": ("dim", "ffn_dim"),
    "model.layers.{bid}.input_layernorm.weight": ("dim",),
    "model.layers.{bid}.post_attention_layernorm.weight": ("dim",),
}

_Q = (("n_heads", "n_heads"),)
_K = (("n_heads", "n_kv_heads"),)

# Meta's Llama checkpoints (llama, llama3 repositories: consolidated.NN.pth).
META = Layout("llama-meta", "llama", (
    Rule("tok_embeddings.weight", "model.embed_tokens.weight"),
    Rule("norm.weight", "model.norm.weight"),
    Rule("output.weight", "lm_head.weight"),
    Rule("layers.{bid}.attention.wq.weight", "model.layers.{bid}.self_attn.q_proj.weight", "permute_rope_meta_to_hf", _Q),
    Rule("layers.{bid}.attention.wk.weight", "model.layers.{bid}.self_attn.k_proj.weight", "permute_rope_meta_to_hf", _K),
    Rule("layers.{bid}.attention.wv.weight", "model.layers.{bid}.self_attn.v_proj.weight"),
    Rule("layers.{bid}.attention.wo.weight", "model.layers.{bid}.self_attn.o_proj.weight"),
    Rule("layers.{bid}.feed_forward.w1.weight", "model.layers.{bid}.mlp.gate_proj.weight"),
    Rule("layers.{bid}.feed_forward.w2.weight", "model.layers.{bid}.mlp.down_proj.weight"),
    Rule("layers.{bid}.feed_forward.w3.weight", "model.layers.{bid}.mlp.up_proj.weight"),
    Rule("layers.{bid}.attention_norm.weight", "model.layers.{bid}.input_layernorm.weight"),
    Rule("layers.{bid}.ffn_norm.weight", "model.layers.{bid}.post_attention_layernorm.weight"),
    Rule("rope.freqs", None),      # Llama 1/2 checkpoints: the rotary frequencies, recomputed from rope_theta
), description="Meta Llama checkpoints (params.json + consolidated.NN.pth): adjacent-pair rotary rows", format="meta",
   config=PARAMS)

ROTARY_ROWS = (
    RotaryRows(r"self_attn\.q_proj\.", "n_heads", "hf"),
    RotaryRows(r"self_attn\.k_proj\.", "n_kv_heads", "hf"),
    RotaryRows(r"(^|\.)attention\.wq\.", "n_heads", "meta"),
    RotaryRows(r"(^|\.)attention\.wk\.", "n_kv_heads", "meta"),
)

FAMILY = Family(
    id="llama",
    model="modelport.models.llama:LlamaForCausalLM",
    config=LlamaConfig,
    aliases=frozen(ALIASES),
    from_values=from_values,
    dims=dims,
    infer=infer,
    model_types=("llama",),
    architectures=("LlamaForCausalLM", "LlamaModel"),
    arch_spellings=("llama2", "llama3"),
    prefix="model.",
    signatures=(r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$",    # llama-hf
                r"^layers\.\d+\.attention\.wq\.weight$"),             # llama-meta
    hub_shapes=frozen(HUB_SHAPES),
    tied=("lm_head.weight", "model.embed_tokens.weight"),
    unsupported_unless=frozen({"pretraining_tp": (1, None)}),
    hub_dropped=("model.layers.{bid}.self_attn.rotary_emb.inv_freq",),
    layouts=(META,),
    derived_buffers=(r"(^|\.)rotary(_emb)?\.inv_freq$",),    # HF rotary_emb, modelport's reference rotary
    rotary_rows=ROTARY_ROWS,
    assumed_defaults=frozen(ASSUMED),
)
