"""GPT-NeoX (Pythia, OpenCALM …): the family record and its config (the reference model is
:mod:`modelport.models.gptneox`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import FormatError, UnsupportedError
from ..config_base import MultiHeadConfig, check_common, divisible, require, rope_scaling, with_assumed_key
from ..family import Family, FusedQKV, Weights, frozen, head_dim_of


@dataclass(frozen=True)
class NeoXConfig(MultiHeadConfig):
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
        return with_assumed_key(out, self.assumed)


ALIASES = {
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


def from_values(v: dict, where: str) -> NeoXConfig:
    require(v, ("n_layers", "n_heads", "dim", "ffn_dim", "vocab_size"), ALIASES, where)
    if rope_scaling(v.pop("rope_scaling", None), where, allowed=()) is not None:
        raise UnsupportedError(f"{where}: rope scaling is not supported for gptneox")
    for key in ("rotary_pct", "rope_theta"):
        if v.get(key) is None:
            v.pop(key, None)
    cfg = NeoXConfig(**v)
    check_common(cfg, where)
    divisible(cfg.dim, cfg.n_heads, "hidden size", "heads", where)
    if not 0.0 < cfg.rotary_pct <= 1.0:
        raise FormatError(f"{where}: rotary fraction {cfg.rotary_pct} must lie in (0, 1]")
    if cfg.rotary_dims % 2:
        raise FormatError(f"{where}: {cfg.rotary_dims} rotary dims per head (head_dim {cfg.head_dim} x {cfg.rotary_pct}) must be even")
    return cfg


def dims(c: dict) -> dict:
    d = {"dim": c.get("hidden_size"), "n_heads": c.get("num_attention_heads"), "vocab_size": c.get("vocab_size"),
         "ffn_dim": c.get("intermediate_size")}
    if d["dim"]:
        d["qkv_dim"] = 3 * d["dim"]
    return {k: v for k, v in d.items() if v is not None}


ASSUMED = {"layer_norm_eps": 1e-5, "rotary_emb_base": 10000.0, "rotary_pct": 0.25, "max_position_embeddings": 2048,
           "use_parallel_residual": True, "hidden_act": "gelu"}


def infer(w: Weights) -> NeoXConfig:
    vocab, dim = w.get("embed_in.weight")
    ffn = w.get("layers.0.mlp.dense_h_to_4h.weight")[0]
    head_dim = head_dim_of([dim])
    d = ASSUMED
    cfg = NeoXConfig(n_layers=w.n_layers(r"layers\.(\d+)\."), n_heads=dim // head_dim, dim=dim, ffn_dim=ffn,
                     vocab_size=vocab, rotary_pct=d["rotary_pct"], rope_theta=d["rotary_emb_base"],
                     norm_eps=d["layer_norm_eps"], max_positions=d["max_position_embeddings"],
                     use_parallel_residual=d["use_parallel_residual"],
                     tie_word_embeddings=not ({"embed_out.weight", "lm_head.weight"} & w.names),
                     attention_bias="layers.0.attention.query_key_value.bias" in w, activation=d["hidden_act"])
    if cfg.rotary_dims % 2:
        cfg = replace(cfg, rotary_pct=1.0)
    return replace(cfg, assumed=("num_attention_heads", *d))


HUB_SHAPES = {
    "gpt_neox.embed_in.weight": ("vocab_size", "dim"),
    "gpt_neox.layers.{bid}.input_layernorm.weight": ("dim",),
    "gpt_neox.layers.{bid}.input_layernorm.bias": ("dim",),
    "gpt_neox.layers.{bid}.post_attention_layernorm.weight": ("dim",),
    "gpt_neox.layers.{bid}.post_attention_layernorm.bias": ("dim",),
    "gpt_neox.layers.{bid}.attention.query_key_value.weight": ("qkv_dim", "dim"),
    "gpt_neox.layers.{bid}.attention.query_key_value.bias": ("qkv_dim",),
    "gpt_neox.layers.{bid}.attention.dense.weight": ("dim", "dim"),
    "gpt_neox.layers.{bid}.attention.dense.bias": ("dim",),
    "gpt_neox.layers.{bid}.mlp.dense_h_to_4h.weight": ("ffn_dim", "dim"),
    "gpt_neox.layers.{bid}.mlp.dense_h_to_4h.bias": ("ffn_dim",),
    "gpt_neox.layers.{bid}.mlp.dense_4h_to_h.weight": ("dim", "ffn_dim"),
    "gpt_neox.layers.{bid}.mlp.dense_4h_to_h.bias": ("dim",),
    "gpt_neox.final_layer_norm.weight": ("dim",),
    "gpt_neox.final_layer_norm.bias": ("dim",),
    "embed_out.weight": ("vocab_size", "dim"),
}

FAMILY = Family(
    id="gptneox",
    model="modelport.models.gptneox:GPTNeoXForCausalLM",
    config=NeoXConfig,
    aliases=frozen(ALIASES),
    from_values=from_values,
    dims=dims,
    infer=infer,
    model_types=("gpt_neox",),
    architectures=("GPTNeoXForCausalLM", "GPTNeoXModel"),
    arch_spellings=("gpt_neox", "gpt-neox", "neox", "opencalm"),
    prefix="gpt_neox.",
    signatures=(r"(^|\.)layers\.\d+\.attention\.query_key_value\.weight$",),   # gptneox-hf
    hub_shapes=frozen(HUB_SHAPES),
    tied=("embed_out.weight", "gpt_neox.embed_in.weight"),
    hub_dropped=("gpt_neox.layers.{bid}.attention.bias", "gpt_neox.layers.{bid}.attention.masked_bias",
                 "gpt_neox.layers.{bid}.attention.rotary_emb.inv_freq"),
    derived_buffers=(r"(^|\.)attention\.bias$", r"(^|\.)attention\.masked_bias$",
                     r"(^|\.)rotary(_emb)?\.inv_freq$"),     # HF rotary_emb, modelport's reference rotary
    # transformers 5.x names the output projection lm_head; published checkpoints and 4.x embed_out
    renames=frozen({"lm_head.weight": "embed_out.weight"}),
    fused_qkv=(FusedQKV(r"query_key_value", "reorder_qkv_blocked_to_neox", "GPT-NeoX fuses q, k, v per head"),),
    assumed_defaults=frozen(ASSUMED),
)
