"""GPT-NeoX (Pythia, OpenCALM …) with Hugging Face parameter names.

The fused ``query_key_value`` projection is laid out per head: its output viewed as
(nh, 3 * hs) holds each head's q, k, v side by side. Rotary applies to the first
``rotary_pct`` of each head's dims. ``use_parallel_residual`` picks
``x + attn(ln1(x)) + mlp(ln2(x))`` over the sequential form.

The output projection is ``embed_out`` as in every published checkpoint and transformers 4.x;
transformers 5.x names it ``lm_head`` (the loader accepts both).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ._common import (Rotary, activation, apply_rotary, attend, attention_bias, join_past, merge_heads, past_length,
                      position_ids, step_positions_bias)
from .families.gptneox import NeoXConfig


class NeoXAttention(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.rotary_dims = cfg.rotary_dims
        self.scale = cfg.head_dim ** -0.5
        self.query_key_value = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.attention_bias)
        self.dense = nn.Linear(cfg.dim, cfg.dim, bias=cfg.attention_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor) -> Tensor:
        b, t, _ = x.shape
        qkv = self.query_key_value(x).reshape(b, t, self.n_heads, 3 * self.head_dim).transpose(1, 2)  # (B, nh, T, 3hs)
        q, k, v = qkv.split(self.head_dim, dim=-1)                                 # 3 x (B, nh, T, hs)
        q = apply_rotary(q, cos, sin, self.rotary_dims, self.head_dim)
        k = apply_rotary(k, cos, sin, self.rotary_dims, self.head_dim)
        return self.dense(merge_heads(attend(q, k, v, bias, self.scale)))

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        """``forward`` for new tokens after cached keys and values: (output, (keys, values) so far)."""
        b, t, _ = x.shape
        qkv = self.query_key_value(x).reshape(b, t, self.n_heads, 3 * self.head_dim).transpose(1, 2)  # (B, nh, T, 3hs)
        q, k, v = qkv.split(self.head_dim, dim=-1)                                 # 3 x (B, nh, T, hs)
        q = apply_rotary(q, cos, sin, self.rotary_dims, self.head_dim)
        k, v = join_past(apply_rotary(k, cos, sin, self.rotary_dims, self.head_dim), v, past)   # (B, nh, S, hs)
        return self.dense(merge_heads(attend(q, k, v, bias, self.scale))), (k, v)


class NeoXMLP(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.dense_4h_to_h = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class NeoXLayer(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.use_parallel_residual = cfg.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = NeoXAttention(cfg)
        self.mlp = NeoXMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor) -> Tensor:
        attn = self.attention(self.input_layernorm(x), cos, sin, bias)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        attn, kv = self.attention.forward_cached(self.input_layernorm(x), cos, sin, bias, past)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x)), kv
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class NeoXBody(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([NeoXLayer(cfg) for _ in range(cfg.n_layers)])
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.rotary = Rotary(cfg.rotary_dims, cfg.rope_theta)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        x = self.embed_in(input_ids)                                               # (B, T, C)
        cos, sin = self.rotary.cos_sin(position_ids(input_ids, attention_mask), x.dtype)
        bias = attention_bias(input_ids, attention_mask)                           # (B|1, 1, T, T)
        for layer in self.layers:
            x = layer(x, cos, sin, bias)
        return self.final_layer_norm(x)

    def forward_cached(self, input_ids: Tensor, attention_mask: Tensor, past):
        """The last ``input_ids.shape[1]`` tokens of a sequence whose ``attention_mask`` covers it all, after the
        cached ``past`` (a (keys, values) pair per layer, or None): (hidden states, the cache so far)."""
        x = self.embed_in(input_ids)                                               # (B, T, C)
        pos, bias = step_positions_bias(attention_mask, input_ids.shape[1])
        cos, sin = self.rotary.cos_sin(pos, x.dtype)
        cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer.forward_cached(x, cos, sin, bias, None if past is None else past[i])
            cache.append(kv)
        return self.final_layer_norm(x), cache


class GPTNeoXForCausalLM(nn.Module):
    """``forward(input_ids, attention_mask=None) -> logits (B, T, vocab)``."""

    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.config = cfg
        self.gpt_neox = NeoXBody(cfg)
        self.embed_out = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.embed_out.weight = self.gpt_neox.embed_in.weight

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.embed_out(self.gpt_neox(input_ids, attention_mask))

    def step(self, input_ids: Tensor, attention_mask: Tensor, past=None, every: bool = False):
        """One greedy step with a key/value cache (see ``LlamaForCausalLM.step``)."""
        h, cache = self.gpt_neox.forward_cached(input_ids[:, past_length(past):], attention_mask, past)
        return self.embed_out(h if every else h[:, -1]), cache

