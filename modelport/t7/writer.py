"""Writing Lua Torch7 files that Lua ``torch.load`` reads: binary (default) or ASCII.

Reference indices come from one pre-order counter shared by tables, torch objects and
functions, starting at 1; an object met again (by identity) is written as a back
reference, so shared storages are written once and cycles terminate. Doubles are
written ``%.17g`` and floats ``%.9g`` in ASCII so values survive exactly.

What can be written: None, bool, int/float (as Lua numbers, i.e. doubles), bytes and
str (UTF-8), LuaTable or dict, list/tuple (as an array table 1..n), T7Tensor,
T7Storage (whose ``data`` may be a callable returning the array, to stream large
sources), LuaObject and LuaFunction.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ..errors import UnsupportedError
from .objects import LuaBoolKey, LuaFunction, LuaObject, T7Storage, T7Tensor
from .reader import BOOLEAN, FUNCTION, NIL, NUMBER, STRING, TABLE, TORCH

_CHUNK = 1 << 20          # elements formatted at a time in ASCII mode
_NUMPY = {"uint8": "u1", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
          "float32": "f4", "float64": "f8", "float16": "f2"}


class _BinaryOut:
    binary = True

    def __init__(self, f, long_size: int, big_endian: bool = False):
        self.f = f
        self.long_size = long_size
        self.e = ">" if big_endian else "<"
        self._int = struct.Struct(self.e + "i")
        self._long = struct.Struct(self.e + ("q" if long_size == 8 else "i"))
        self._double = struct.Struct(self.e + "d")

    def int(self, v: int) -> None:
        self.f.write(self._int.pack(v))

    def long(self, v: int) -> None:
        self.f.write(self._long.pack(_wrap(v, self.long_size)))

    def longs(self, values) -> None:
        for v in values:
            self.long(v)

    def double(self, v: float) -> None:
        self.f.write(self._double.pack(v))

    def raw(self, data: bytes) -> None:
        self.f.write(data)

    def array(self, arr, dtype: str) -> None:
        code = self.e + ("i4" if dtype == "int64" and self.long_size == 4 else _NUMPY[dtype])
        arr = np.ascontiguousarray(arr).astype(code, copy=False)
        self.f.write(memoryview(arr).cast("B"))


class _AsciiOut:
    binary = False

    def __init__(self, f):
        self.f = f

    def int(self, v: int) -> None:
        self.f.write(b"%d\n" % v)

    long = int

    def longs(self, values) -> None:
        if len(values):
            self.f.write(" ".join("%d" % v for v in values).encode() + b"\n")

    def double(self, v: float) -> None:
        self.f.write(_fmt17(v).encode() + b"\n")

    def raw(self, data: bytes) -> None:
        if data:
            self.f.write(data)
            self.f.write(b"\n")

    def array(self, arr, dtype: str) -> None:
        arr = np.asarray(arr).reshape(-1)
        n = len(arr)
        if n == 0:
            return
        if dtype in ("uint8", "int8"):
            self.raw(np.ascontiguousarray(arr).astype(_NUMPY[dtype], copy=False).tobytes())
            return
        if dtype.startswith("float"):
            fmt = _fmt17 if dtype == "float64" else _fmt9
            values = arr.astype(np.float64)
        else:
            fmt = "%d".__mod__
            values = arr
        for start in range(0, n, _CHUNK):
            part = " ".join(map(fmt, values[start:start + _CHUNK].tolist())).encode()
            self.f.write(part)
            self.f.write(b" " if start + _CHUNK < n else b"\n")


def _fmt17(v: float) -> str:
    return "%.17g" % v if math.isfinite(v) else _special(v)


def _fmt9(v: float) -> str:
    return "%.9g" % v if math.isfinite(v) else _special(v)


def _special(v: float) -> str:
    if math.isnan(v):
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return "inf" if v > 0 else "-inf"


def _wrap(v: int, size: int) -> int:
    """A long as the writing machine stores it: 4-byte longs keep the low 32 bits."""
    if size == 8:
        return v
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


class ObjectWriter:
    """Writes objects to one stream; the reference counter continues across objects."""

    def __init__(self, out, referenced: bool = True):
        self.out = out
        self.referenced = referenced
        self.index: dict[int, int] = {}
        self._keep: list = []          # objects indexed by id() stay alive while writing
        self.count = 0

    def _new(self, obj) -> int | None:
        """Write the reference index; None when ``obj`` was written before (a back reference)."""
        key = id(obj)
        if self.referenced and key in self.index:
            self.out.int(self.index[key])
            return None
        self.count += 1
        self.index[key] = self.count
        self._keep.append(obj)
        self.out.int(self.count)
        return self.count

    def _string(self, data: bytes) -> None:
        self.out.int(len(data))
        self.out.raw(data)

    def write(self, obj) -> None:
        out = self.out
        if obj is None:
            out.int(NIL)
        elif isinstance(obj, (bool, LuaBoolKey)):
            out.int(BOOLEAN)
            out.int(1 if (obj.value if isinstance(obj, LuaBoolKey) else obj) else 0)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out.int(NUMBER)
            out.double(float(obj))
        elif isinstance(obj, (np.floating, np.integer)):
            out.int(NUMBER)
            out.double(float(obj))
        elif isinstance(obj, (bytes, bytearray)):
            out.int(STRING)
            self._string(bytes(obj))
        elif isinstance(obj, str):
            out.int(STRING)
            self._string(obj.encode())
        elif isinstance(obj, dict):
            out.int(TABLE)
            if self._new(obj) is not None:
                self._table_body(obj.items())
        elif isinstance(obj, (list, tuple)):
            out.int(TABLE)
            if self._new(obj) is not None:
                self._table_body((float(i + 1), v) for i, v in enumerate(obj))
        elif isinstance(obj, T7Tensor):
            self._tensor(obj)
        elif isinstance(obj, T7Storage):
            self._storage(obj)
        elif isinstance(obj, LuaObject):
            self._object(obj)
        elif isinstance(obj, LuaFunction):
            out.int(obj.tag)
            if obj.tag == FUNCTION or self._new(obj) is not None:
                self._string(obj.bytecode)
                self.write(obj.upvalues)
        else:
            raise UnsupportedError(f"a {type(obj).__name__} cannot be written to a Lua Torch7 file")

    def _table_body(self, items) -> None:
        entries = [(k, v) for k, v in items if v is not None]
        self.out.int(len(entries))
        for k, v in entries:
            if k is None or (isinstance(k, float) and math.isnan(k)):
                raise UnsupportedError(f"a Lua table key cannot be {k!r}")
            self.write(k)
            self.write(v)

    def _header(self, version, class_name: str) -> None:
        if version is not None:
            self._string(b"V " + _version(version).encode())
        self._string(class_name.encode("latin-1"))

    def _tensor(self, t: T7Tensor) -> None:
        self.out.int(TORCH)
        if self._new(t) is None:
            return
        self._header(1, t.class_name)
        if not t.size or 0 in t.size:
            self.out.int(0)          # an empty tensor: nDimension 0 (TH has no size-0 dimensions)
            self.out.long(t.offset + 1)
            self.write(t.storage)
            return
        self.out.int(len(t.size))
        self.out.longs(t.size)
        self.out.longs(t.stride)
        self.out.long(t.offset + 1)
        self.write(t.storage)

    def _storage(self, s: T7Storage) -> None:
        self.out.int(TORCH)
        if self._new(s) is None:
            return
        self._header(1, s.class_name)
        data = s.data() if callable(s.data) else s.data
        data = np.asarray(data).reshape(-1)
        self.out.long(len(data))
        self.out.array(data, s.dtype)

    def _object(self, obj: LuaObject) -> None:
        self.out.int(TORCH)
        if self._new(obj) is None:
            return
        self._header(obj.version, obj.class_name)
        fields = obj.fields
        if obj.class_name in ("tds.Hash", "tds_hash", "tds.Vec"):
            items = list(fields.items()) if fields is not None else []
            self.out.long(len(items))
            for k, v in items:
                if obj.class_name != "tds.Vec":
                    self.write(k)
                self.write(v)
            return
        if obj.class_name == "nn.GPU":
            self.write(obj.payload)
        if not isinstance(fields, (dict, list, tuple)):
            raise UnsupportedError(f"the fields of a {obj.class_name} object must be a table, not {type(fields).__name__}")
        self.write(fields)


def _version(v) -> str:
    # Lua 5.1 / LuaJIT tostring(1) is "1"; a version read as "1.0" (Lua 5.3) stays a float.
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def tensor_class(dtype: str, cuda: bool = False) -> tuple[str, str]:
    """The (tensor, storage) class names that hold ``dtype``."""
    names = {"uint8": "Byte", "int8": "Char", "int16": "Short", "int32": "Int", "int64": "Long",
             "float32": "Float", "float64": "Double", "float16": "Half"}
    if dtype not in names:
        raise UnsupportedError(
            f"Lua Torch7 has no tensor type for {dtype}; cast first (e.g. --dtype fp32)")
    elem = names[dtype]
    if cuda:
        elem = "Cuda" if elem == "Float" else "Cuda" + elem
    return f"torch.{elem}Tensor", f"torch.{elem}Storage"


def write_t7(obj, path, mode: str = "binary", long_size: int = 8, referenced: bool = True,
             big_endian: bool = False) -> None:
    """Write one object to ``path`` as ``torch.save(path, obj, mode)`` would.

    ``long_size=4`` writes what a Windows or 32-bit Torch writes (LongStorage data truncated
    to 32 bits, as Torch does); ``big_endian`` writes what ``DiskFile:bigEndianEncoding()`` does.
    """
    if mode not in ("binary", "ascii"):
        raise UnsupportedError(f"t7 mode must be 'binary' or 'ascii', not {mode!r}")
    if long_size not in (4, 8):
        raise UnsupportedError(f"t7 long size must be 4 or 8, not {long_size}")
    with open(Path(path), "wb", buffering=1 << 20) as f:
        out = _BinaryOut(f, long_size, big_endian) if mode == "binary" else _AsciiOut(f)
        ObjectWriter(out, referenced).write(obj)


def dumps(*objs, mode: str = "binary", long_size: int = 8, big_endian: bool = False) -> bytes:
    """The bytes :func:`write_t7` writes for ``obj`` (several objects: one stream, one counter)."""
    import io

    f = io.BytesIO()
    out = _BinaryOut(f, long_size, big_endian) if mode == "binary" else _AsciiOut(f)
    writer = ObjectWriter(out)
    for obj in objs:
        writer.write(obj)
    return f.getvalue()
