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

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import FormatError, UnsupportedError
from .objects import LuaObject, LuaTable, T7Storage, T7Tensor

Builder = Callable[[LuaObject, "BuildContext"], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register(*class_names: str) -> Callable[[Builder], Builder]:
    """Register a builder for one or more Lua class names; a name registered twice raises."""

    def deco(fn: Builder) -> Builder:
        for name in class_names:
            if name in _BUILDERS:
                raise ValueError(f"a builder for Lua class {name!r} is already registered")
            _BUILDERS[name] = fn
        return fn

    return deco


def supported_classes() -> list[str]:
    """The Lua class names that have a builder."""
    _load_families()
    return sorted(_BUILDERS)


def _load_families() -> None:
    from . import nn_layers, nn_more, nn_tables, nngraph  # noqa: F401  (their builders register at import)


# --------------------------------------------------------------------------------------------
# Building


class BuildContext:
    """Where a build is: the file (for messages), and modules already built (shared objects)."""

    def __init__(self, source: str | None = None):
        self.source = source
        self._built: dict[int, nn.Module] = {}
        self._building: set[int] = set()      # objects whose build is under way (cycle check)
        self._keep: list[Any] = []          # keeps ids in _built valid for the whole build
        self._tensors: dict[tuple, torch.Tensor] = {}   # one copy per view of a storage (shared weights)

    def tensor(self, value: T7Tensor) -> torch.Tensor:
        """The torch copy of a Lua tensor; the same view of the same storage gives the same tensor."""
        if value.storage is None:
            return torch.from_numpy(value.numpy())
        key = (id(value.storage), value.offset, value.size, value.stride, value.dtype)
        known = self._tensors.get(key)
        if known is None:
            known = self._tensors[key] = torch.from_numpy(np.array(value.numpy(), copy=True))
            self._keep.append(value.storage)
        return known

    def where(self, path: str, obj: Any = None) -> str:
        cls = f" ({obj.class_name})" if isinstance(obj, LuaObject) else ""
        loc = f"{path or 'model'}{cls}"
        return f"{self.source}: {loc}" if self.source else loc

    def build(self, obj: Any, path: str) -> nn.Module:
        """Build (or reuse, for an object met before) the module for ``obj`` found at ``path``."""
        if not isinstance(obj, LuaObject):
            kind = type(obj).__name__
            raise FormatError(f"{self.where(path)}: expected an nn module (a Lua class instance), found {kind}")
        known = self._built.get(id(obj))
        if known is not None:
            return known
        builder = _BUILDERS.get(obj.class_name)
        if builder is None:
            raise UnsupportedError(
                f"{self.where(path, obj)}: no PyTorch rebuild for Lua class {obj.class_name} "
                f"({len(supported_classes())} classes are supported: modelport.t7.nn.supported_classes())"
            )
        if not isinstance(obj.fields, dict):
            raise FormatError(f"{self.where(path, obj)}: the object has no field table")
        if id(obj) in self._building:
            raise FormatError(f"{self.where(path, obj)}: the module contains itself")
        self._building.add(id(obj))
        try:
            module = builder(obj, Fields(obj, self, path))
        finally:
            self._building.discard(id(obj))
        module.lua_class = obj.class_name
        module.eval()
        self._built[id(obj)] = module
        self._keep.append(obj)
        return module


class Fields:
    """Typed access to one object's fields, with errors that name the object and the field."""

    def __init__(self, obj: LuaObject, ctx: BuildContext, path: str):
        self.obj, self.ctx, self.path = obj, ctx, path
        self.version = obj.version

    def error(self, message: str) -> FormatError:
        return FormatError(f"{self.ctx.where(self.path, self.obj)}: {message}")

    def raw(self, name: str, default: Any = ...) -> Any:
        fields = self.obj.fields
        for key in (name.encode(), name):
            if key in fields:
                return fields[key]
        if default is ...:
            raise self.error(f"field '{name}' is missing")
        return default

    def has(self, name: str) -> bool:
        return self.raw(name, None) is not None

    def number(self, name: str, default: Any = ...) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"field '{name}' should be a number, found {type(value).__name__}")
        return float(value)

    def int(self, name: str, default: Any = ...) -> int:
        value = self.number(name, default)
        if not math.isfinite(value) or value != int(value):
            raise self.error(f"field '{name}' should be an integer, found {value!r}")
        return int(value)

    def bool(self, name: str, default: Any = ...) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(f"field '{name}' should be a boolean, found {type(value).__name__}")
        return value

    def tensor(self, name: str) -> torch.Tensor:
        """A copy of a tensor field (views into shared storages are sliced here)."""
        value = self.raw(name)
        if not isinstance(value, T7Tensor):
            raise self.error(f"field '{name}' should be a tensor, found {type(value).__name__}")
        if len(value.size) == 0:
            raise self.error(f"tensor field '{name}' is empty")
        return self.ctx.tensor(value)

    def ints(self, name: str) -> list[int]:
        """A LongStorage, a 1-D tensor or an array table of integers."""
        value = self.raw(name)
        if isinstance(value, T7Storage):
            items = value.data.tolist()
        elif isinstance(value, T7Tensor):
            items = value.numpy().reshape(-1).tolist() if value.size else []
        elif isinstance(value, LuaTable):
            items = [value[float(i)] if float(i) in value else value.get(i) for i in range(1, len(value) + 1)]
        else:
            raise self.error(f"field '{name}' should be a LongStorage of sizes, found {type(value).__name__}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in items):
            raise self.error(f"field '{name}' should hold integers")
        return [int(v) for v in items]

    def children(self, name: str = "modules") -> list[nn.Module]:
        """The modules of an array table field, built in Lua order (1..n)."""
        return [self.ctx.build(obj, f"{self.child_path(name, i)}") for i, obj in enumerate(self.array(name), 1)]

    def child_path(self, name: str, index: int) -> str:
        return f"{self.path}.{name}[{index}]" if self.path else f"{name}[{index}]"

    def array(self, name: str) -> list[Any]:
        table = self.raw(name, None)
        if table is None:
            return []
        if not isinstance(table, LuaTable):
            raise self.error(f"field '{name}' should be a table, found {type(table).__name__}")
        return lua_array(table)


def lua_array(table: LuaTable) -> list[Any]:
    """The values at keys 1..n of a Lua table (Lua's ``ipairs``), keys read as numbers."""
    out = []
    i = 1
    while True:
        for key in (float(i), i):
            if key in table and not isinstance(key, bool):
                out.append(table[key])
                break
        else:
            return out
        i += 1


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


# --------------------------------------------------------------------------------------------
# Parameter helpers


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=t.is_floating_point())


def set_params(module: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    for name, t in tensors.items():
        if t is None:
            setattr(module, name, None)
        else:
            setattr(module, name, _param(t))
    return module


def check_shape(f: Fields, name: str, t: torch.Tensor, numel: int) -> None:
    if t.numel() != numel:
        raise f.error(f"tensor '{name}' has {t.numel()} elements ({tuple(t.shape)}), expected {numel}")


def positive_dim(dim: int, n_input_dims: int | None, ndim: int) -> int:
    """Lua's _getPositiveDimension, returned 0-based."""
    if dim < 0:
        return ndim + dim
    if n_input_dims is not None and ndim == n_input_dims + 1:
        return dim
    return dim - 1
