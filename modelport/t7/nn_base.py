"""The pieces every Lua ``nn`` builder uses: the registry of builders by Lua class name
(:func:`register`), the build context, typed field access and parameter helpers.

The builder modules (``nn_layers``, ``nn_more``, ``nn_tables``, ``nngraph``) import this module and
register at import; :mod:`modelport.t7.nn` loads them and builds.
"""

from __future__ import annotations

import math
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
                f"({len(_BUILDERS)} classes are supported: modelport.t7.nn.supported_classes())"
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
