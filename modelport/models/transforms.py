"""Tensor transforms between layouts, each with its exact inverse.

A transform works on a numpy array holding the raw elements (bfloat16 is held as
uint16: every transform here only moves elements, so the element type does not
matter) and has a shape function that says what shape comes out, or why the
tensor does not fit. Names are verb phrases with a direction. Transforms only reshape and
swap axes, so they take numpy arrays and torch tensors alike and import neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import LayoutError


@dataclass(frozen=True)
class Transform:
    name: str
    inverse: str                                   # the transform that undoes this one
    apply: Callable                                # (array, **args) -> array
    shape: Callable                                # (shape, **args) -> shape, or raises ValueError
    meaning: str = ""                              # a phrase for `diff`


# -- q/k rotary permutation ------------------------------------------------------------
# Meta's checkpoints rotate adjacent pairs (x0, x1), (x2, x3) … of each head; the HF
# layout rotates the two halves of each head (rotate_half). Within each head of
# head_dim rows, Meta row 2*i + j is HF row j * head_dim/2 + i.

def _rope_shape(shape, n_heads: int):
    if len(shape) < 1 or n_heads < 1 or shape[0] % (2 * n_heads):
        raise ValueError(f"{shape[0] if shape else 0} rows cannot be split into {n_heads} heads of an even size")
    return tuple(shape)


def permute_rope_meta_to_hf(a, n_heads: int):
    rows, rest = a.shape[0], a.shape[1:]
    # (n_heads, head_dim/2, 2, *rest) -> (n_heads, 2, head_dim/2, *rest)
    return a.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(a.shape)


def permute_rope_hf_to_meta(a, n_heads: int):
    rows, rest = a.shape[0], a.shape[1:]
    # (n_heads, 2, head_dim/2, *rest) -> (n_heads, head_dim/2, 2, *rest)
    return a.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2).reshape(a.shape)


# -- transpose (Conv1D [in, out] <-> nn.Linear [out, in]) ---------------------------------

def _transpose_shape(shape):
    if len(shape) != 2:
        raise ValueError(f"a {len(shape)}-d tensor cannot be transposed as a matrix")
    return (shape[1], shape[0])


def transpose(a):
    return a.T


# -- GPT-NeoX fused QKV: per-head [q k v] blocks <-> [all q | all k | all v] --------------

def _qkv_shape(shape, n_heads: int):
    if len(shape) < 1 or shape[0] % (3 * n_heads):
        raise ValueError(f"{shape[0] if shape else 0} rows cannot be split into q, k, v of {n_heads} heads")
    return tuple(shape)


def reorder_qkv_neox_to_blocked(a, n_heads: int):
    rows, rest = a.shape[0], a.shape[1:]
    # (n_heads, 3, head_dim, *rest) -> (3, n_heads, head_dim, *rest)
    return a.reshape(n_heads, 3, rows // n_heads // 3, *rest).swapaxes(0, 1).reshape(a.shape)


def reorder_qkv_blocked_to_neox(a, n_heads: int):
    rows, rest = a.shape[0], a.shape[1:]
    # (3, n_heads, head_dim, *rest) -> (n_heads, 3, head_dim, *rest)
    return a.reshape(3, n_heads, rows // n_heads // 3, *rest).swapaxes(0, 1).reshape(a.shape)


TRANSFORMS: dict[str, Transform] = {}


def _register(t: Transform) -> None:
    if t.name in TRANSFORMS:
        raise RuntimeError(f"transform {t.name!r} registered twice")
    TRANSFORMS[t.name] = t


for _t in (
    Transform("permute_rope_meta_to_hf", "permute_rope_hf_to_meta", permute_rope_meta_to_hf, _rope_shape,
              "Meta-layout rows in an HF-named slot"),
    Transform("permute_rope_hf_to_meta", "permute_rope_meta_to_hf", permute_rope_hf_to_meta, _rope_shape,
              "HF-layout rows in a Meta-named slot"),
    Transform("transpose", "transpose", transpose, _transpose_shape,
              "nn.Linear [out, in] weight where Conv1D [in, out] is expected, or the reverse"),
    Transform("reorder_qkv_neox_to_blocked", "reorder_qkv_blocked_to_neox", reorder_qkv_neox_to_blocked, _qkv_shape,
              "per-head fused q/k/v (GPT-NeoX) where q|k|v blocks are expected"),
    Transform("reorder_qkv_blocked_to_neox", "reorder_qkv_neox_to_blocked", reorder_qkv_blocked_to_neox, _qkv_shape,
              "q|k|v blocks where per-head fused q/k/v (GPT-NeoX) is expected"),
):
    _register(_t)


def get(name: str) -> Transform:
    return TRANSFORMS[name]


def out_shape(name: str, shape: tuple[int, ...], args: dict, tensor: str) -> tuple[int, ...]:
    """The shape ``name`` gives a tensor of ``shape``; a LayoutError naming the tensor otherwise."""
    try:
        return tuple(get(name).shape(tuple(shape), **args))
    except ValueError as exc:
        raise LayoutError(f"tensor {tensor!r} of shape {list(shape)} does not fit {call(name, args)}: {exc}; "
                          "check the head counts in the config") from exc


def call(name: str, args: dict) -> str:
    """``permute_rope_meta_to_hf(n_heads=32)``."""
    return f"{name}({', '.join(f'{k}={v}' for k, v in args.items())})"
