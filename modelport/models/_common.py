"""Small pure pieces the reference models share: positions, masks, attention, rotary, activations.

Everything here is written for ``torch.jit.script`` and ``torch.jit.trace`` alike: typed
signatures, no Python-side shape checks, no data-dependent Python control flow.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedError

def position_ids(input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """Positions that follow the mask as ``generate()`` builds them: real tokens count 0, 1, 2 …"""
    if attention_mask is None:
        seq = torch.arange(input_ids.shape[1], device=input_ids.device)
        return seq.unsqueeze(0).expand(input_ids.shape[0], input_ids.shape[1])   # (B, T)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)                     # (B, T)


def attention_bias(input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """Additive float32 bias: 0 where a query may attend a key (causal, not padding), the float32
    minimum elsewhere. The minimum (not -inf) keeps a fully masked row (a left-padding query) finite:
    its softmax is uniform garbage that no real token attends to."""
    t = input_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()    # (T, T)
    allowed = causal.unsqueeze(0).unsqueeze(0)                                     # (1, 1, T, T)
    if attention_mask is not None:
        keys = attention_mask.unsqueeze(1).unsqueeze(2) != 0                       # (B, 1, 1, T)
        allowed = allowed & keys                                                   # (B, 1, T, T)
    zero = torch.zeros(allowed.shape, dtype=torch.float32, device=input_ids.device)
    return zero.masked_fill(allowed.logical_not(), -3.4028234663852886e38)   # a literal: torch.jit.script needs one


def step_positions_bias(attention_mask: Tensor, new: int) -> tuple[Tensor, Tensor]:
    """Positions (B, new) and attention bias (B, 1, new, S) of the last ``new`` tokens of a sequence whose
    mask (B, S) covers every token so far, cached ones included: the rows :func:`position_ids` and
    :func:`attention_bias` give those queries over the whole sequence."""
    pos = position_ids(attention_mask, attention_mask)[:, -new:]                  # (B, new)
    bias = attention_bias(attention_mask, attention_mask)[:, :, -new:]            # (B, 1, new, S)
    return pos, bias


def past_length(past: Optional[list[tuple[Tensor, Tensor]]]) -> int:
    """Tokens already in a key/value cache (a list per layer of (B, heads, S, hs) keys and values)."""
    return 0 if past is None else int(past[0][0].shape[2])


def join_past(k: Tensor, v: Tensor, past: Optional[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """New keys and values (B, h, T, hs) after the cached ones: (B, h, S + T, hs)."""
    if past is None:
        return k, v
    return torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Softmax attention over (B, nh, T, hs) tensors; scores and softmax in float32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias          # (B, nh, T, T)
    weights = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(weights, v)                                                # (B, nh, T, hs)


def merge_heads(x: Tensor) -> Tensor:
    """(B, nh, T, hs) -> (B, T, nh * hs)"""
    b, nh, t, hs = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * hs)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): each key/value head serves n_rep query heads."""
    if n_rep == 1:
        return x
    b, nkv, t, hs = x.shape
    return x.unsqueeze(2).expand(b, nkv, n_rep, t, hs).reshape(b, nkv * n_rep, t, hs)


def rope_inv_freq(rotary_dims: int, theta: float, scaling=None) -> Tensor:
    """Inverse frequencies of the rotary embedding (float32), with linear or Llama 3 scaling."""
    inv = 1.0 / (theta ** (torch.arange(0, rotary_dims, 2, dtype=torch.int64).float() / rotary_dims))
    if scaling is None:
        return inv
    if scaling.rope_type == "linear":
        return inv / scaling.factor
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)     # long waves: slowed down
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    raise UnsupportedError(f"rope scaling of type {scaling.rope_type!r} is not supported")


class Rotary(nn.Module):
    """Rotary position embedding on the first ``rotary_dims`` of each head, halves rotated (HF/NeoX style)."""

    def __init__(self, rotary_dims: int, theta: float, scaling=None):
        super().__init__()
        self.rotary_dims = rotary_dims
        self._theta = theta
        self._scaling = scaling
        # Recomputed, never loaded; kept float32 whatever the model's dtype (see reset()).
        self.register_buffer("inv_freq", rope_inv_freq(rotary_dims, theta, scaling), persistent=False)

    def reset(self) -> None:
        """Recompute ``inv_freq`` in float32 after a dtype cast of the whole model."""
        self.inv_freq = rope_inv_freq(self.rotary_dims, self._theta, self._scaling).to(self.inv_freq.device)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin for (B, T) positions, each (B, 1, T, rotary_dims)."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.float()            # (B, T, rd/2)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)                       # (B, 1, T, rd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, rotary_dims: int, head_dim: int) -> Tensor:
    """Rotate the first ``rotary_dims`` of each (B, nh, T, hs) head; the rest pass through."""
    if rotary_dims == head_dim:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :rotary_dims], x[..., rotary_dims:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


class NewGELU(nn.Module):
    """GPT-2's tanh approximation of GELU, written out as transformers' ``gelu_new`` computes it."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FastGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class ExactGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class TanhGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


def activation(name: str) -> nn.Module:
    """The module for a config.json activation name (the names are checked in config.py)."""
    table = {"gelu": ExactGELU, "gelu_new": NewGELU, "gelu_fast": FastGELU, "gelu_pytorch_tanh": TanhGELU,
             "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}
    if name not in table:
        raise UnsupportedError(f"activation {name!r} is not supported; supported: {', '.join(table)}")
    return table[name]()
