"""Lua ``nn`` models read from ``.t7`` files, rebuilt as runnable ``torch.nn.Module`` trees.

``build_module(obj)`` turns a :class:`~modelport.t7.objects.LuaObject` (``nn.Sequential``,
``nn.Linear`` ...) into an equivalent module in eval mode; ``load_lua_model(path)`` reads a
file and does the same for its first object. Each Lua class has one builder in a registry
keyed by the Lua class name (``"nn.Linear"``); registering a name twice raises, and a class
with no builder is a :class:`~modelport.errors.UnsupportedError` naming the class and where it
sits in the model (``modules[3].modules[2] (nn.Foo)``, Lua's 1-based indices).

Lua semantics kept on purpose (they differ from PyTorch's defaults):

- modules take non-batched input as Lua's do: ``(C, H, W)`` images, ``(n,)`` vectors;
- ``SoftMax``/``LogSoftMax`` normalise over dim 0 of 1-D and 3-D input and dim 1 of 2-D and 4-D;
- ``View``/``Reshape`` decide between "batch" and "no batch" with Lua's rules;
- ``LookupTable`` takes the same **1-based** indices a Lua user passes;
- ``Dropout`` written without ``v2`` (or with ``v2 = false``) multiplies by ``1 - p`` in eval;
- ``SpatialAveragePooling`` without ``divide`` sums instead of averaging, as Lua does for old files.

Known difference: in ceil mode with stride > kernel and no padding, THNN can add an output window
lying wholly outside the image (it corrects the output size only when padding is non-zero); PyTorch
does not produce that window.

Parameters are copied out of their storages (``T7Tensor.numpy()`` honours offsets and strides).
Tensors that are the same view of one storage (``clone('weight', 'bias')``, as recurrent models
share their steps' weights) come out as one ``nn.Parameter`` held by every module that uses it;
other views into one flattened storage (``getParameters()``) come out as separate tensors.
Every rebuilt module carries ``lua_class`` (the Lua class name) for :func:`describe_module`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .nn_base import _BUILDERS, BuildContext, lua_array, register  # noqa: F401  (lua_array, register: public here too)
from .objects import LuaObject


def supported_classes() -> list[str]:
    """The Lua class names that have a builder."""
    _load_families()
    return sorted(_BUILDERS)


def _load_families() -> None:
    from . import nn_layers, nn_more, nn_tables, nngraph  # noqa: F401  (their builders register at import)


def build_module(obj: Any, source: str | None = None) -> nn.Module:
    """Rebuild a Lua nn object as an equivalent ``torch.nn.Module`` in eval mode."""
    _load_families()
    module = BuildContext(source).build(obj, "")
    share_parameters(module)
    return module.eval()


def share_parameters(module: nn.Module) -> None:
    """Make parameters that hold the same memory (one Lua weight used by several modules) one
    ``nn.Parameter``, so the model counts, trains and saves them once, as Lua does."""
    first: dict[tuple, nn.Parameter] = {}
    for owner in module.modules():
        for name, p in list(owner.named_parameters(recurse=False)):
            if not p.numel():
                continue
            key = (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride(), p.dtype)
            kept = first.setdefault(key, p)
            if kept is not p:
                setattr(owner, name, kept)


def load_lua_model(path: str | Path, **reader_opts: Any) -> nn.Module:
    """Read a ``.t7`` file holding an nn model and rebuild it (eval mode); see the module docstring."""
    from .reader import read_t7

    t7 = read_t7(path, **reader_opts)
    return build_module(t7.root, source=str(path))


# Lua classes whose first child receives the module's own input unchanged
_FIRST_CHILD_TAKES_INPUT = ("nn.Sequential", "nn.Concat", "nn.ConcatTable", "nn.DepthConcat")


def example_input(module: nn.Module) -> tuple[torch.dtype, tuple[int, int] | None]:
    """The input a rebuilt Lua model takes: its dtype and, for index inputs, the range of valid values
    ``(low, high)`` (high excluded).

    A model whose input goes first to a ``LookupTable`` takes Lua's **1-based** indices, ``1..nIndex``
    (int64); any other takes values of the model's own floating type (a ``DoubleTensor`` model computes
    in float64, as Lua did), float32 when it holds no floating tensor."""
    from .nn_layers import LookupTable

    first = module
    while getattr(first, "lua_class", None) in _FIRST_CHILD_TAKES_INPUT and len(first._modules):
        first = next(iter(first.children()))
    if isinstance(first, LookupTable):
        return torch.int64, (1, first.weight.shape[0] + 1)
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return t.dtype, None
    return torch.float32, None


def input_count(module: nn.Module) -> int:
    """How many tensors the model takes: an nngraph gModule may take several, everything else one."""
    return int(getattr(module, "n_inputs", 1))


def is_nn_model(obj: Any) -> bool:
    """Whether a read object looks like an nn module (a Lua class in the nn/cudnn namespaces)."""
    return isinstance(obj, LuaObject) and obj.class_name.split(".")[0] in ("nn", "cudnn")


# --------------------------------------------------------------------------------------------
# Describing


def describe_module(module: nn.Module) -> str:
    """The module tree of a rebuilt model, one line per module, with parameter counts."""
    lines: list[str] = []
    seen: set[int] = set()

    def count(m: nn.Module, recurse: bool) -> int:
        return sum(p.numel() for p in m.parameters(recurse=recurse))

    def walk(m: nn.Module, label: str, depth: int) -> None:
        lua = getattr(m, "lua_class", None)
        torch_name = type(m).__name__
        head = f"{lua} -> {torch_name}" if lua else torch_name
        extra = m.extra_repr()
        if extra:
            head += f"({extra})"
        kids = list(m.named_children())
        n = count(m, recurse=bool(kids))
        tail = f"{n:,} params" if n else ""
        if kids and n:
            tail = f"{n:,} params in all"
        if id(m) in seen:
            lines.append(f"{'  ' * depth}{label}{head}  (shared, listed above)")
            return
        seen.add(id(m))
        lines.append(f"{'  ' * depth}{label}{head}" + (f"  {tail}" if tail else ""))
        for name, child in kids:
            walk(child, f"({name}) ", depth + 1)

    walk(module, "", 0)
    total = count(module, recurse=True)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
    lines.append(f"total: {total:,} parameters" + (f" ({', '.join(dtypes)})" if dtypes else ""))
    return "\n".join(lines)
