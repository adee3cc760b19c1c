"""GPT-2: the family record and its config (the reference model is :mod:`modelport.models.gpt2`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...errors import LayoutError
from ..config_base import MultiHeadConfig, check_common, divisible, require, with_assumed_key
from ..family import Family, Layout, Rule, Weights, frozen, head_dim_of


@dataclass(frozen=True)
class GPT2Config(MultiHeadConfig):
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

    def to_hf_config(self, spelling: int = 4) -> dict:
        out = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_layer": self.n_layers, "n_head": self.n_heads, "n_embd": self.dim, "vocab_size": self.vocab_size,
            "n_inner": self.ffn_dim, "n_positions": self.max_positions, "layer_norm_epsilon": self.norm_eps,
            "activation_function": self.activation, "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        return with_assumed_key(out, self.assumed)


ALIASES = {
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


def from_values(v: dict, where: str) -> GPT2Config:
    require(v, ("n_layers", "n_heads", "dim", "vocab_size"), ALIASES, where)
    if v.get("ffn_dim") is None:
        v["ffn_dim"] = 4 * v["dim"]
    cfg = GPT2Config(**v)
    check_common(cfg, where)
    divisible(cfg.dim, cfg.n_heads, "hidden size", "heads", where)
    return cfg


def dims(c: dict) -> dict:
    d = {"dim": c.get("n_embd"), "n_heads": c.get("n_head"), "vocab_size": c.get("vocab_size"),
         "n_positions": c.get("n_positions")}
    if d["dim"]:
        d["ffn_dim"], d["qkv_dim"] = c.get("n_inner") or 4 * d["dim"], 3 * d["dim"]
    return {k: v for k, v in d.items() if v is not None}


ASSUMED = {"layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}


def infer(w: Weights) -> GPT2Config:
    vocab, dim = w.get("wte.weight")
    positions = w.get("wpe.weight")[0]
    c_attn = w.get("h.0.attn.c_attn.weight")
    if c_attn != (dim, 3 * dim):
        hint = " (nn.Linear orientation, as nanoGPT writes: convert with the gpt2-nanogpt layout)" if c_attn == (3 * dim, dim) else ""
        raise LayoutError(f"{w.where}: h.0.attn.c_attn.weight has shape {list(c_attn)}, GPT-2 needs {[dim, 3 * dim]}{hint}")
    ffn = w.get("h.0.mlp.c_fc.weight")[1]
    head_dim = 64 if dim % 64 == 0 else head_dim_of([dim])
    cfg = GPT2Config(n_layers=w.n_layers(r"h\.(\d+)\."), n_heads=dim // head_dim, dim=dim, vocab_size=vocab,
                     ffn_dim=ffn, max_positions=positions, norm_eps=ASSUMED["layer_norm_epsilon"],
                     activation=ASSUMED["activation_function"], tie_word_embeddings="lm_head.weight" not in w.names)
    return replace(cfg, assumed=("n_head", *ASSUMED))


HUB_SHAPES = {
    "transformer.wte.weight": ("vocab_size", "dim"),
    "transformer.wpe.weight": ("n_positions", "dim"),
    "transformer.h.{bid}.ln_1.weight": ("dim",),
    "transformer.h.{bid}.ln_1.bias": ("dim",),
    "transformer.h.{bid}.attn.c_attn.weight": ("dim", "qkv_dim"),
    "transformer.h.{bid}.attn.c_attn.bias": ("qkv_dim",),
    "transformer.h.{bid}.attn.c_proj.weight": ("dim", "dim"),
    "transformer.h.{bid}.attn.c_proj.bias": ("dim",),
    "transformer.h.{bid}.ln_2.weight": ("dim",),
    "transformer.h.{bid}.ln_2.bias": ("dim",),
    "transformer.h.{bid}.mlp.c_fc.weight": ("dim", "ffn_dim"),
    "transformer.h.{bid}.mlp.c_fc.bias": ("ffn_dim",),
    "transformer.h.{bid}.mlp.c_proj.weight": ("ffn_dim", "dim"),
    "transformer.h.{bid}.mlp.c_proj.bias": ("dim",),
    "transformer.ln_f.weight": ("dim",),
    "transformer.ln_f.bias": ("dim",),
    "lm_head.weight": ("vocab_size", "dim"),
}

# nanoGPT (karpathy/nanoGPT model.py): the same names as HF GPT-2, but nn.Linear
# weights [out, in] where HF has Conv1D [in, out] — the four transposed weights.
_TRANSPOSED = ("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight")
NANOGPT = Layout("gpt2-nanogpt", "gpt2", tuple(
    Rule(n, n, "transpose" if n.endswith(_TRANSPOSED) else None) for n in HUB_SHAPES
) + (Rule("transformer.h.{bid}.attn.bias", None),),   # nanoGPT's causal-mask buffer (no flash attention)
    orientation=("transformer.h.{bid}.mlp.c_fc.weight", "tall"),
    description="nanoGPT-style GPT-2 checkpoints: nn.Linear weights [out, in]")

FAMILY = Family(
    id="gpt2",
    model="modelport.models.gpt2:GPT2LMHeadModel",
    config=GPT2Config,
    aliases=frozen(ALIASES),
    from_values=from_values,
    dims=dims,
    infer=infer,
    model_types=("gpt2",),
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    prefix="transformer.",
    signatures=(r"(^|\.)h\.\d+\.attn\.c_attn\.weight$",),          # gpt2-hf, gpt2-nanogpt
    hub_shapes=frozen(HUB_SHAPES),
    tied=("lm_head.weight", "transformer.wte.weight"),
    unsupported_unless=frozen({"add_cross_attention": (False, None)}),
    hub_dropped=("transformer.h.{bid}.attn.bias", "transformer.h.{bid}.attn.masked_bias"),
    hub_orientation=("transformer.h.{bid}.mlp.c_fc.weight", "wide"),
    layouts=(NANOGPT,),
    # buffers older checkpoints carry that the model recomputes (the causal mask and its fill value)
    derived_buffers=(r"(^|\.)h\.\d+\.attn\.bias$", r"(^|\.)h\.\d+\.attn\.masked_bias$"),
    assumed_defaults=frozen(ASSUMED),
)
