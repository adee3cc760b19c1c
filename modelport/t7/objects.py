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


_MISSING = object()


class LuaBoolKey:
    """A boolean used as a table key, kept apart from the numbers 1 and 0 (``True == 1`` in Python)."""

    __slots__ = ("value",)

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


TRUE_KEY = LuaBoolKey(True)
FALSE_KEY = LuaBoolKey(False)


def _key(key):
    if key is True:
        return TRUE_KEY
    if key is False:
        return FALSE_KEY
    return key


class LuaTable(dict):
    """A Lua table: keys of any Lua type, kept distinct (1, 1.5, True, b"1").

    Strings are ``bytes``; a ``str`` key is looked up as its UTF-8 bytes, so
    ``t["weight"]`` finds ``t[b"weight"]``. Boolean keys are stored as
    :data:`TRUE_KEY` / :data:`FALSE_KEY` so that they never merge with ``1`` / ``0``.
    """

    __hash__ = object.__hash__

    def __getitem__(self, key):
        return dict.__getitem__(self, _key(key))

    def __setitem__(self, key, value):
        dict.__setitem__(self, _key(key), value)

    def __delitem__(self, key):
        dict.__delitem__(self, _key(key))

    def __contains__(self, key):
        if isinstance(key, str):
            return dict.__contains__(self, key.encode())
        return dict.__contains__(self, _key(key))

    def __missing__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key.encode())
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def array(self) -> list:
        """The values at keys 1, 2, … n (stopping at the first missing key), as Lua's ``ipairs``."""
        out = []
        while True:
            value = dict.get(self, float(len(out) + 1), _MISSING)
            if value is _MISSING:
                return out
            out.append(value)

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
    tag: int = 8                    # type tag it was written with: 8 (current), 7 (2014-15), 6 (oldest, no index)


@dataclass(eq=False)
class LuaObject:
    """An instance of a Lua class (nn.*, nngraph, user classes, tds.*)."""

    class_name: str
    fields: Any                     # usually a LuaTable; tds.Hash / tds.Vec: a LuaTable of entries
    version: int | float | None = None  # from a "V n" prefix in the class name record; None: legacy, unversioned
    payload: Any = None             # nn.GPU: the header table written before the fields


@dataclass(eq=False)
class T7Storage:
    """A torch.*Storage: a flat buffer of one element type (``data`` is a 1-D numpy array)."""

    class_name: str                 # e.g. "torch.FloatStorage", "torch.CudaStorage"
    dtype: str                      # canonical modelport dtype name
    data: Any                       # numpy.ndarray, 1-D, native little-endian (read-only when mapped from a file)
    file_offset: int | None = None  # where the raw little-endian elements lie in the file they came from

    @property
    def size(self) -> int:
        return len(self.data)


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

        if not self.size:           # nDimension 0: TH's empty tensor (there are no 0-dim tensors)
            return np.zeros((0,), dtype=_np_dtype(self.dtype))
        if self.storage is None or 0 in self.size:
            return np.zeros(self.size, dtype=_np_dtype(self.dtype))
        base = self.storage.data
        item = base.itemsize
        # a size-1 dimension is never stepped along: its stride, whatever the file says, is not used
        strides = tuple(0 if n == 1 else s * item for n, s in zip(self.size, self.stride))
        return np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size, strides=strides, writeable=False)


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
