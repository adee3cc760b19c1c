"""Llama 1/2/3 with Hugging Face parameter names.

RMSNorm, SwiGLU, rotary embedding with ``rope_theta`` and linear or Llama 3 frequency scaling,
grouped-query attention (``n_kv_heads`` < ``n_heads``), tied or untied output embedding.
q/k rows are in the HF rotary layout (halves rotated); Meta's layout differs by a row permutation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._common import (Rotary, activation, apply_rotary, attend, attention_bias, join_past, merge_heads, past_length,
                      position_ids, repeat_kv, step_positions_bias)
from .families.llama import LlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.o_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)      # (B, nh, T, hs)
        k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)   # (B, nkv, T, hs)
        v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, self.head_dim, self.head_dim)
        k = apply_rotary(k, cos, sin, self.head_dim, self.head_dim)
        rep = self.n_heads // self.n_kv_heads
        out = attend(q, repeat_kv(k, rep), repeat_kv(v, rep), bias, self.scale)
        return self.o_proj(merge_heads(out))

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        """``forward`` for new tokens after cached keys and values: (output, (keys, values) so far)."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)      # (B, nh, T, hs)
        k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)   # (B, nkv, T, hs)
        v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, self.head_dim, self.head_dim)
        k, v = join_past(apply_rotary(k, cos, sin, self.head_dim, self.head_dim), v, past)  # (B, nkv, S, hs)
        rep = self.n_heads // self.n_kv_heads
        out = attend(q, repeat_kv(k, rep), repeat_kv(v, rep), bias, self.scale)
        return self.o_proj(merge_heads(out)), (k, v)


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.mlp_bias)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        a, kv = self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, bias, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaBody(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        x = self.embed_tokens(input_ids)                                           # (B, T, C)
        cos, sin = self.rotary.cos_sin(position_ids(input_ids, attention_mask), x.dtype)
        bias = attention_bias(input_ids, attention_mask)                           # (B|1, 1, T, T)
        for layer in self.layers:
            x = layer(x, cos, sin, bias)
        return self.norm(x)

    def forward_cached(self, input_ids: Tensor, attention_mask: Tensor, past):
        """The last ``input_ids.shape[1]`` tokens of a sequence whose ``attention_mask`` covers it all, after the
        cached ``past`` (a (keys, values) pair per layer, or None): (hidden states, the cache so far)."""
        x = self.embed_tokens(input_ids)                                           # (B, T, C)
        pos, bias = step_positions_bias(attention_mask, input_ids.shape[1])
        cos, sin = self.rotary.cos_sin(pos, x.dtype)
        cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer.forward_cached(x, cos, sin, bias, None if past is None else past[i])
            cache.append(kv)
        return self.norm(x), cache


class LlamaForCausalLM(nn.Module):
    """``forward(input_ids, attention_mask=None) -> logits (B, T, vocab)``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.lm_head(self.model(input_ids, attention_mask))

    def step(self, input_ids: Tensor, attention_mask: Tensor, past=None, every: bool = False):
        """One greedy step with a key/value cache: ``input_ids`` / ``attention_mask`` (B, S) are the whole
        sequence so far, of which the tokens after the cached ones run; returns the last position's logits
        (B, vocab), or with ``every`` those of every position that ran (B, T, vocab), and the cache to pass
        next time."""
        h, cache = self.model.forward_cached(input_ids[:, past_length(past):], attention_mask, past)
        return self.lm_head(h if every else h[:, -1]), cache

