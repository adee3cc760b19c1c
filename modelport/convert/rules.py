"""Layouts as data: one hub layout per family (the Hugging Face one) and, for every
other layout, a table of rename rules to the hub.

A rule maps a name of its layout (``{bid}`` stands for a block number) to a hub name,
optionally through a transform from :mod:`modelport.convert.transforms` whose
arguments name dimensions of the model (``{"n_heads": "n_kv_heads"}`` passes the
model's ``n_kv_heads`` as the transform's ``n_heads``). Rules from the hub back to a
layout are derived from these tables (see :mod:`modelport.convert.layouts`), never
written by hand. A rule whose hub name is None marks a tensor that the hub does not
keep (a buffer that is recomputed, such as Meta's ``rope.freqs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Rule:
    name: str                      # name in this layout, with {bid}
    hub: str | None                # name in the hub layout; None: dropped on the way to the hub
    transform: str | None = None   # transform from this layout to the hub
    args: tuple[tuple[str, str], ...] = ()   # (transform argument, model dimension)


@dataclass(frozen=True)
class Layout:
    id: str
    family: str
    rules: tuple[Rule, ...]
    # A tensor (hub name) and the orientation its weight has in this layout: "wide" when
    # rows < columns, "tall" otherwise. Tells apart layouts that share every name
    # (HF GPT-2 Conv1D weights and nanoGPT's nn.Linear weights).
    orientation: tuple[str, str] | None = None
    description: str = ""

    @property
    def is_hub(self) -> bool:
        return all(r.hub in (r.name, None) and r.transform is None for r in self.rules)


# -- shapes of hub tensors, in model dimensions (see layouts.dims) ------------------------
# Used to refuse a tensor whose shape does not fit, naming both shapes.

HUB_SHAPES = MappingProxyType({
    "llama": MappingProxyType({
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
    }),
    "gpt2": MappingProxyType({
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
    }),
    "gptneox": MappingProxyType({
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
    }),
})

# Buffers that HF checkpoints of older transformers versions carry and that the hub
# does not keep (recomputed by the model).
HUB_DROPPED = MappingProxyType({
    "llama": ("model.layers.{bid}.self_attn.rotary_emb.inv_freq",),
    "gpt2": ("transformer.h.{bid}.attn.bias", "transformer.h.{bid}.attn.masked_bias"),
    "gptneox": ("gpt_neox.layers.{bid}.attention.bias", "gpt_neox.layers.{bid}.attention.masked_bias",
                "gpt_neox.layers.{bid}.attention.rotary_emb.inv_freq"),
})


def _hub(family: str, layout_id: str, orientation=None) -> Layout:
    rules = tuple(Rule(n, n) for n in HUB_SHAPES[family]) + tuple(Rule(n, None) for n in HUB_DROPPED[family])
    return Layout(layout_id, family, rules, orientation, f"Hugging Face transformers layout ({family})")


_Q = (("n_heads", "n_heads"),)
_K = (("n_heads", "n_kv_heads"),)

# Meta's Llama checkpoints (llama, llama3 repositories: consolidated.NN.pth).
LLAMA_META = Layout("llama-meta", "llama", (
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
), description="Meta Llama checkpoints (params.json + consolidated.NN.pth): adjacent-pair rotary rows")

# nanoGPT (karpathy/nanoGPT model.py): the same names as HF GPT-2, but nn.Linear
# weights [out, in] where HF has Conv1D [in, out] — the four transposed weights.
_T = "transpose"
GPT2_NANOGPT = Layout("gpt2-nanogpt", "gpt2", tuple(
    Rule(n, n, _T if n.endswith(("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight")) else None)
    for n in HUB_SHAPES["gpt2"]
) + (Rule("transformer.h.{bid}.attn.bias", None),),   # nanoGPT's causal-mask buffer (no flash attention)
    orientation=("transformer.h.{bid}.mlp.c_fc.weight", "tall"),
    description="nanoGPT-style GPT-2 checkpoints: nn.Linear weights [out, in]")

LAYOUTS: MappingProxyType = MappingProxyType({
    lay.id: lay for lay in (
        _hub("llama", "llama-hf"),
        LLAMA_META,
        _hub("gpt2", "gpt2-hf", ("transformer.h.{bid}.mlp.c_fc.weight", "wide")),
        GPT2_NANOGPT,
        _hub("gptneox", "gptneox-hf"),
    )
})

HUBS = MappingProxyType({"llama": "llama-hf", "gpt2": "gpt2-hf", "gptneox": "gptneox-hf"})

# The layout each format implies, whatever the source's layout.
FORMAT_LAYOUTS = MappingProxyType({"meta": "llama-meta"})
# Formats that always hold the hub layout of the source's family.
HUB_FORMATS = frozenset({"hf"})
