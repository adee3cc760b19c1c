"""Builders for Lua nn containers and table modules (Sequential, Concat, ConcatTable, ParallelTable,
JoinTable, SplitTable, SelectTable, CAddTable, CSubTable, CMulTable, CDivTable, Narrow, Identity).

Lua tables of tensors are Python lists here. Dimensions in the Lua fields are 1-based; negative
ones count from the end; ``nInputDims`` shifts a positive dimension by one when the input has one
more dimension than that (a batch), as Lua does.
"""

from __future__ import annotations

import torch
from torch import nn

from .nn_base import positive_dim, register



class Concat(nn.Module):
    """nn.Concat: every child gets the same input; outputs are joined along ``dim`` (0-based)."""

    def __init__(self, dim: int, children: list[nn.Module]):
        super().__init__()
        self.dim = dim
        for i, m in enumerate(children):
            self.add_module(str(i), m)

    def forward(self, x):
        return torch.cat([m(x) for m in self.children()], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ConcatTable(nn.Module):
    """nn.ConcatTable: every child gets the same input; the output is the list of their outputs."""

    def __init__(self, children: list[nn.Module]):
        super().__init__()
        for i, m in enumerate(children):
            self.add_module(str(i), m)

    def forward(self, x):
        return [m(x) for m in self.children()]


class ParallelTable(nn.Module):
    """nn.ParallelTable: child i gets element i of the input list."""

    def __init__(self, children: list[nn.Module]):
        super().__init__()
        for i, m in enumerate(children):
            self.add_module(str(i), m)

    def forward(self, xs):
        return [m(x) for m, x in zip(self.children(), xs)]


class CAddTable(nn.Module):
    """nn.CAddTable: the elementwise sum of a list of tensors."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@register("nn.Sequential", "nn.SpatialLPPooling")   # LPPooling is a Sequential (pow, sub-sampling, root)
def _sequential(obj, f):
    return nn.Sequential(*f.children())


@register("nn.Concat")
def _concat(obj, f):
    return Concat(f.int("dimension") - 1, f.children())


@register("nn.ConcatTable")
def _concat_table(obj, f):
    return ConcatTable(f.children())


@register("nn.ParallelTable")
def _parallel_table(obj, f):
    return ParallelTable(f.children())


@register("nn.CAddTable")
def _cadd_table(obj, f):
    return CAddTable()


@register("nn.Identity")
def _identity(obj, f):
    return nn.Identity()


class JoinTable(nn.Module):
    """nn.JoinTable: concatenate a list of tensors along a Lua dimension."""

    def __init__(self, dim: int, n_input_dims: int | None):
        super().__init__()
        self.dim, self.n_input_dims = dim, n_input_dims

    def forward(self, xs):
        return torch.cat(list(xs), dim=positive_dim(self.dim, self.n_input_dims, xs[0].dim()))

    def extra_repr(self) -> str:
        return f"lua_dim={self.dim}, n_input_dims={self.n_input_dims}"


class SplitTable(nn.Module):
    """nn.SplitTable: the list of slices of a tensor along a Lua dimension (that dimension removed)."""

    def __init__(self, dim: int, n_input_dims: int | None):
        super().__init__()
        self.dim, self.n_input_dims = dim, n_input_dims

    def forward(self, x):
        return list(torch.unbind(x, positive_dim(self.dim, self.n_input_dims, x.dim())))

    def extra_repr(self) -> str:
        return f"lua_dim={self.dim}, n_input_dims={self.n_input_dims}"


class SelectTable(nn.Module):
    """nn.SelectTable: element ``index`` (1-based; negative counts from the end) of a list."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, xs):
        return xs[self.index - 1] if self.index > 0 else xs[len(xs) + self.index]

    def extra_repr(self) -> str:
        return f"lua_index={self.index}"


class TableOp(nn.Module):
    """Elementwise difference (two inputs), product or quotient (two inputs) of a list of tensors."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def forward(self, xs):
        if self.op == "sub":
            return xs[0] - xs[1]
        if self.op == "div":
            return xs[0] / xs[1]
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out

    def extra_repr(self) -> str:
        return self.op


class Narrow(nn.Module):
    """nn.Narrow(dimension, index, length): ``length`` elements from 1-based ``index``; a negative
    length counts from the end (Lua: size - index + length + 2); a negative dimension too."""

    def __init__(self, dim: int, index: int, length: int):
        super().__init__()
        self.dim, self.index, self.length = dim, index, length

    def forward(self, x):
        dim = x.dim() + self.dim if self.dim < 0 else self.dim - 1
        length = self.length if self.length >= 0 else x.shape[dim] - self.index + self.length + 2
        return x.narrow(dim, self.index - 1, length)

    def extra_repr(self) -> str:
        return f"lua_dim={self.dim}, lua_index={self.index}, length={self.length}"


def _n_input_dims(f) -> int | None:
    return f.int("nInputDims") if f.has("nInputDims") else None


@register("nn.JoinTable")
def _join_table(obj, f):
    return JoinTable(f.int("dimension"), _n_input_dims(f))


@register("nn.SplitTable")
def _split_table(obj, f):
    return SplitTable(f.int("dimension"), _n_input_dims(f))


@register("nn.SelectTable")
def _select_table(obj, f):
    index = f.int("index")
    if index == 0:
        raise f.error("index 0 is not a Lua table index")
    return SelectTable(index)


@register("nn.CSubTable")
def _csub_table(obj, f):
    return TableOp("sub")


@register("nn.CMulTable")
def _cmul_table(obj, f):
    return TableOp("mul")


@register("nn.CDivTable")
def _cdiv_table(obj, f):
    return TableOp("div")


@register("nn.Narrow")
def _narrow(obj, f):
    index = f.int("index")
    if index < 1:
        raise f.error(f"index {index} should be >= 1")
    return Narrow(f.int("dimension"), index, f.int("length", 1))
