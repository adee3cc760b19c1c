"""Builders for more Lua nn modules: elementwise functions, reductions, padding, resampling,
Transpose, MM, DepthConcat, type and layout no-ops.

Dimensions in Lua fields are 1-based; ``nInputDims`` shifts a positive dimension by one for a
batched input (one dimension more), as in Lua.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nn_base import positive_dim, register

_DTYPES = {"torch.FloatTensor": torch.float32, "torch.DoubleTensor": torch.float64,
           "torch.HalfTensor": torch.float16, "torch.CudaTensor": torch.float32,
           "torch.CudaDoubleTensor": torch.float64, "torch.CudaHalfTensor": torch.float16,
           "torch.LongTensor": torch.int64, "torch.IntTensor": torch.int32, "torch.ByteTensor": torch.uint8}


class Reduce(nn.Module):
    """Lua Sum / Mean / Max / Min over one dimension; that dimension is dropped unless the result
    would be 0-D (Lua keeps a 1-element vector) or ``squeeze`` is false."""

    def __init__(self, op: str, dim: int, n_input_dims: int | None, squeeze: bool):
        super().__init__()
        self.op, self.dim, self.n_input_dims, self.squeeze = op, dim, n_input_dims, squeeze

    def forward(self, x):
        d = positive_dim(self.dim, self.n_input_dims, x.dim())
        if self.op == "sum":
            y = x.sum(d, keepdim=True)
        elif self.op == "mean":
            y = x.mean(d, keepdim=True)
        elif self.op == "max":
            y = x.amax(d, keepdim=True)
        else:
            y = x.amin(d, keepdim=True)
        return y.squeeze(d) if self.squeeze and y.dim() > 1 else y

    def extra_repr(self) -> str:
        return f"{self.op}, lua_dim={self.dim}, n_input_dims={self.n_input_dims}"


class Pointwise(nn.Module):
    """exp, log, pow(p), clamp(lo, hi)."""

    def __init__(self, op: str, a: float = 0.0, b: float = 0.0):
        super().__init__()
        self.op, self.a, self.b = op, a, b

    def forward(self, x):
        if self.op == "exp":
            return torch.exp(x)
        if self.op == "log":
            return torch.log(x)
        if self.op == "pow":
            return torch.pow(x, self.a)
        return torch.clamp(x, self.a, self.b)

    def extra_repr(self) -> str:
        return self.op + (f", {self.a!r}, {self.b!r}" if self.op == "clamp" else f", {self.a!r}" if self.op == "pow" else "")


class Pad2d(nn.Module):
    """Reflection or replication padding of the last two dimensions (left, right, top, bottom)."""

    def __init__(self, pads: list[int], mode: str):
        super().__init__()
        self.pads, self.mode = list(pads), mode

    def forward(self, x):
        return F.pad(x, self.pads, mode=self.mode)

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.pads}"


class UpsampleNearest(nn.Module):
    """Lua SpatialUpSamplingNearest(scale): every pixel repeated scale x scale; (C, H, W) accepted."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x.repeat_interleave(self.scale, dim=-1).repeat_interleave(self.scale, dim=-2)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class Transpose(nn.Module):
    """Lua Transpose({a, b}, ...): swaps 1-based dimension pairs in order."""

    def __init__(self, pairs: list[tuple[int, int]], num_input_dims: int | None):
        super().__init__()
        self.pairs, self.num_input_dims = pairs, num_input_dims

    def forward(self, x):
        shift = x.dim() - self.num_input_dims if self.num_input_dims is not None else 0
        for a, b in self.pairs:
            x = x.transpose(a - 1 + shift, b - 1 + shift)
        return x

    def extra_repr(self) -> str:
        return f"{self.pairs}"


class MM(nn.Module):
    """Lua MM(transA, transB) on {A, B}: matrix product, batched for 3-D inputs."""

    def __init__(self, trans_a: bool, trans_b: bool):
        super().__init__()
        self.trans_a, self.trans_b = trans_a, trans_b

    def forward(self, xs):
        a, b = xs[0], xs[1]
        if self.trans_a:
            a = a.transpose(-1, -2)
        if self.trans_b:
            b = b.transpose(-1, -2)
        return torch.matmul(a, b)


class DepthConcat(nn.Module):
    """Lua DepthConcat: like Concat, but smaller outputs are zero-padded to the largest size in the
    other dimensions, placed at offset floor((max - size) / 2)."""

    def __init__(self, dim: int, children: list[nn.Module]):
        super().__init__()
        self.dim = dim
        for i, m in enumerate(children):
            self.add_module(str(i), m)

    def forward(self, x):
        outs = [m(x) for m in self.children()]
        sizes = [max(o.shape[d] for o in outs) for d in range(outs[0].dim())]
        padded = []
        for o in outs:
            pads: list[int] = []
            for d in reversed(range(o.dim())):
                extra = 0 if d == self.dim else sizes[d] - o.shape[d]
                pads += [extra // 2, extra - extra // 2]
            padded.append(F.pad(o, pads))
        return torch.cat(padded, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)

    def extra_repr(self) -> str:
        return str(self.dtype)


def _n_input_dims(f, name: str = "nInputDims") -> int | None:
    return f.int(name) if f.has(name) else None


@register("nn.Sum", "nn.Mean", "nn.Max", "nn.Min")
def _reduce(obj, f):
    kind = obj.class_name.split(".")[1]
    op = {"Sum": "sum", "Mean": "mean", "Max": "max", "Min": "min"}[kind]
    if kind == "Sum" and f.raw("sizeAverage", False) is True:
        op = "mean"
    # files written before the squeeze option existed always squeezed
    return Reduce(op, f.int("dimension", 1), _n_input_dims(f), f.raw("squeeze", True) is not False)


@register("nn.Exp")
def _exp(obj, f):
    return Pointwise("exp")


@register("nn.Log")
def _log(obj, f):
    return Pointwise("log")


@register("nn.Power")
def _power(obj, f):
    return Pointwise("pow", f.number("pow"))


@register("nn.HardTanh", "nn.Clamp")
def _clamp(obj, f):
    low, high = f.number("min_val", -1.0), f.number("max_val", 1.0)     # Clamp stores them as HardTanh does
    if low > high:
        raise f.error(f"min_val={low} is above max_val={high}")
    return Pointwise("clamp", low, high)


@register("nn.SoftPlus")
def _softplus(obj, f):
    return nn.Softplus(beta=f.number("beta", 1.0), threshold=f.number("threshold", 20.0))


@register("nn.SpatialReflectionPadding", "nn.SpatialReplicationPadding")
def _pad(obj, f):
    mode = "reflect" if obj.class_name.endswith("ReflectionPadding") else "replicate"
    pads = [f.int("pad_l"), f.int("pad_r"), f.int("pad_t"), f.int("pad_b")]
    if min(pads) < 0:
        raise f.error(f"negative padding {pads} is not supported for {mode} padding")
    return Pad2d(pads, mode)


@register("nn.SpatialUpSamplingNearest")
def _upsample(obj, f):
    scale = f.int("scale_factor")
    if scale < 1:
        raise f.error(f"scale_factor {scale} should be >= 1")
    return UpsampleNearest(scale)


@register("nn.Transpose")
def _transpose(obj, f):
    from .nn_base import lua_array

    pairs = []
    for i, perm in enumerate(f.array("permutations"), 1):
        pair = lua_array(perm) if isinstance(perm, dict) else []
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
            raise f.error(f"permutations[{i}] should be a pair of dimensions")
        pairs.append((int(pair[0]), int(pair[1])))
    return Transpose(pairs, _n_input_dims(f, "numInputDims"))


@register("nn.MM")
def _mm(obj, f):
    return MM(f.bool("transA", False), f.bool("transB", False))


@register("nn.DepthConcat")
def _depth_concat(obj, f):
    return DepthConcat(f.int("dimension") - 1, f.children())


@register("nn.Copy")
def _copy(obj, f):
    out = f.raw("outtype", None)
    name = out.decode("latin-1") if isinstance(out, bytes) else out
    if f.raw("dontCast", False) is True or name is None:
        return nn.Identity()
    if name not in _DTYPES:
        raise f.error(f"outtype {name!r} is not a known tensor type")
    return Cast(_DTYPES[name])


@register("nn.Contiguous")
def _contiguous(obj, f):
    return nn.Identity()
