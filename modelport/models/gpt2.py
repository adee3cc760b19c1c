"""GPT-2 with Hugging Face parameter names.

Linear layers are ``Conv1D`` as in transformers: weight stored ``[in, out]`` and applied as
``x @ weight + bias``, so HF weights load as they are (nanoGPT's ``nn.Linear`` stores them transposed).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._common import (activation, attend, attention_bias, join_past, merge_heads, past_length, position_ids,
                      step_positions_bias)
from .families.gpt2 import GPT2Config


class Conv1D(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))                     # [in, out]
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.weight) + self.bias


class GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.c_attn = Conv1D(cfg.dim, 3 * cfg.dim)
        self.c_proj = Conv1D(cfg.dim, cfg.dim)
        scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale = scale / float(layer_idx + 1)
        self.scale = scale

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)                                  # 3 x (B, T, C)
        q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)          # (B, nh, T, hs)
        k = k.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        return self.c_proj(merge_heads(attend(q, k, v, bias, self.scale)))

    def forward_cached(self, x: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        """``forward`` for new tokens after cached keys and values: (output, (keys, values) so far)."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)                                  # 3 x (B, T, C)
        q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)          # (B, nh, T, hs)
        k = k.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = join_past(k, v, past)                                              # (B, nh, S, hs)
        return self.c_proj(merge_heads(attend(q, k, v, bias, self.scale))), (k, v)


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.dim, cfg.ffn_dim)
        self.c_proj = Conv1D(cfg.ffn_dim, cfg.dim)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), bias)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, bias: Tensor, past: Optional[tuple[Tensor, Tensor]]):
        a, kv = self.attn.forward_cached(self.ln_1(x), bias, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT2Body(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.dim)
        self.h = nn.ModuleList([GPT2Block(cfg, i) for i in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        pos = position_ids(input_ids, attention_mask)                             # (B, T)
        bias = attention_bias(input_ids, attention_mask)                          # (B|1, 1, T, T)
        x = self.wte(input_ids) + self.wpe(pos)                                   # (B, T, C)
        for block in self.h:
            x = block(x, bias)
        return self.ln_f(x)

    def forward_cached(self, input_ids: Tensor, attention_mask: Tensor, past):
        """The last ``input_ids.shape[1]`` tokens of a sequence whose ``attention_mask`` covers it all, after the
        cached ``past`` (a (keys, values) pair per block, or None): (hidden states, the cache so far)."""
        pos, bias = step_positions_bias(attention_mask, input_ids.shape[1])
        x = self.wte(input_ids) + self.wpe(pos)                                   # (B, T, C)
        cache = []
        for i, block in enumerate(self.h):
            x, kv = block.forward_cached(x, bias, None if past is None else past[i])
            cache.append(kv)
        return self.ln_f(x), cache


class GPT2LMHeadModel(nn.Module):
    """``forward(input_ids, attention_mask=None) -> logits (B, T, vocab)``."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.transformer = GPT2Body(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.lm_head(self.transformer(input_ids, attention_mask))

    def step(self, input_ids: Tensor, attention_mask: Tensor, past=None, every: bool = False):
        """One greedy step with a key/value cache (see ``LlamaForCausalLM.step``)."""
        h, cache = self.transformer.forward_cached(input_ids[:, past_length(past):], attention_mask, past)
        return self.lm_head(h if every else h[:, -1]), cache

