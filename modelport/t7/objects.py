"""Python values for what a Lua Torch7 file holds.

Lua values map to: nil -> None, number -> float (int when written as an integral
Lua number is NOT assumed: numbers stay float), string -> bytes (raw, never
decoded), boolean -> bool, table -> LuaTable, function -> LuaFunction, torch
objects -> T7Storage / T7Tensor / LuaObject. Tables, objects and functions are
hashed by identity, so they can be keys (``t[t] = t``) and can contain themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class LuaTable(dict):
    """A Lua table: keys of any Lua type, kept distinct (1, 1.5, True, b"1")."""

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __repr__(self) -> str:
        return f"LuaTable({len(self)} entries)"


@dataclass(eq=False)
class LuaFunction:
    """A Lua function, kept as opaque bytecode plus its upvalues table."""

    bytecode: bytes
    upvalues: Any = None


@dataclass(eq=False)
class LuaObject:
    """An instance of a Lua class (nn.*, nngraph, user classes, tds.*)."""

    class_name: str
    fields: Any                     # usually a LuaTable; tds.Hash / tds.Vec: a LuaTable of entries
    version: int | None = None      # from a "V n" prefix in the class name record, when present


@dataclass(eq=False)
class T7Storage:
    """A torch.*Storage: a flat buffer of one element type (``data`` is a 1-D numpy array)."""

    class_name: str                 # e.g. "torch.FloatStorage", "torch.CudaStorage"
    dtype: str                      # canonical modelport dtype name
    data: Any                       # numpy.ndarray, 1-D, native little-endian


@dataclass(eq=False)
class T7Tensor:
    """A torch.*Tensor: a strided view into a storage (offset 0-based, strides in elements)."""

    class_name: str
    dtype: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int                     # 0-based element offset into storage
    storage: T7Storage | None       # None for an empty tensor written without storage

    def numpy(self):
        """A numpy view (no copy) of the tensor's elements."""
        import numpy as np

        if self.storage is None or 0 in self.size:
            return np.zeros(self.size, dtype=_np_dtype(self.dtype))
        base = self.storage.data
        item = base.itemsize
        return np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )


def _np_dtype(name: str):
    from .. import dtypes

    return dtypes.get(name).numpy


@dataclass
class T7File:
    """What was read from a file: the first object, and facts about how it was written."""

    root: Any
    binary: bool
    long_size: int
    big_endian: bool
    trailing_bytes: int = 0         # bytes after the first object (torch.load ignores them)
    notes: list[str] = field(default_factory=list)
