"""Reading and writing the pickles inside torch checkpoints without importing torch.

Reading goes through :class:`CheckpointUnpickler`, whose ``find_class`` allows only
the globals a state dict needs and maps each to an inert stand-in defined here, so
unpickling builds plain Python objects and runs nothing from the file. Anything
else raises :class:`~modelport.errors.UnsafeContentError` before it is imported.

Writing emits protocol-2 opcodes by hand (:class:`StateDictPickler`): a dict of
``torch._utils._rebuild_tensor_v2`` calls over persistent storage ids, as
``torch.save`` writes them.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import dtypes
from ..errors import UnsafeContentError
from ._untrusted import MAX_RANK


class BadCheckpoint(ValueError):
    """The pickle is well formed but its objects are not what a checkpoint holds."""


class _NoState:
    """Objects built while unpickling take no state: a BUILD opcode on them is refused (a BUILD
    would otherwise write into ``__dict__`` past every check, frozen dataclass or not)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise BadCheckpoint(f"state applied to a {type(self).__name__}")


@dataclass(frozen=True)
class StorageType(_NoState):
    dtype: str                  # canonical dtype of the storage class (torch.FloatStorage -> float32)


@dataclass(frozen=True)
class StorageRef(_NoState):
    key: str                    # persistent id key: zip member data/<key>, or legacy root key
    dtype: str
    numel: int                  # elements, as the pickle claims (checked against the file later)
    shift: int = 0              # legacy storage views: element offset into the root storage


@dataclass(frozen=True)
class TensorRef(_NoState):
    storage: StorageRef
    offset: int                 # element offset into the storage
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype


@dataclass(frozen=True)
class _Marker(_NoState):
    name: str                   # torch.Tensor, torch.nn.Parameter, torch.float32 …


def _int(v, what: str) -> int:
    if type(v) is not int or v < 0:
        raise BadCheckpoint(f"{what} is {v!r}, not a non-negative integer")
    return v


def _ints(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)):
        raise BadCheckpoint(f"{what} is {type(v).__name__}, not a tuple of integers")
    if len(v) > MAX_RANK:
        raise BadCheckpoint(f"{what} has {len(v)} dimensions (at most {MAX_RANK} are read)")
    return tuple(_int(x, what) for x in v)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, StorageRef):
        raise BadCheckpoint(f"a tensor is built from {type(storage).__name__}, not a storage")
    shape, strides = _ints(size, "a tensor shape"), _ints(stride, "a tensor stride")
    if len(shape) != len(strides):
        raise BadCheckpoint(f"a tensor has shape {list(shape)} but stride {list(strides)}")
    return TensorRef(storage, storage.shift + _int(storage_offset, "a storage offset"), shape, strides)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, TensorRef):
        raise BadCheckpoint(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type(func, new_type, args, state=None):
    if not isinstance(new_type, _Marker) or new_type.name not in ("torch.Tensor", "torch.nn.parameter.Parameter"):
        raise BadCheckpoint(f"a tensor of type {new_type!r}, which is not a plain tensor or parameter")
    return func(*args)


def _encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BadCheckpoint(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not how pickle spells bytes")
    return text.encode("latin1")


class _Safe:
    """An allow-listed callable; BUILD on it fails instead of setting attributes."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state):
        raise BadCheckpoint("state applied to a function")


def _allowed() -> dict[tuple[str, str], object]:
    table: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): _Safe(collections.OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2"): _Safe(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor"): _Safe(_rebuild_tensor),
        ("torch._utils", "_rebuild_parameter"): _Safe(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Safe(_rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"): _Safe(_rebuild_from_type),
        ("torch", "Size"): _Safe(lambda *a: tuple(*a)),
        ("torch", "device"): _Safe(lambda *a: ":".join(str(x) for x in a)),
        ("_codecs", "encode"): _Safe(_encode),
        ("builtins", "set"): _Safe(set),
        ("builtins", "frozenset"): _Safe(frozenset),
        ("torch", "Tensor"): _Marker("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.parameter.Parameter"),
        ("torch", "UntypedStorage"): StorageType("uint8"),
    }
    for d in dtypes.DTYPES.values():
        table[("torch", d.storage)] = StorageType(d.name)
        table[("torch", d.name)] = _Marker(f"torch.{d.name}")
    return table


def _arg_table() -> dict[int, int]:
    """Opcode byte -> argument length (>= 0), or how it is spelled (pickletools' negative codes)."""
    return {ord(op.code): (op.arg.n if op.arg is not None else 0) for op in pickletools.opcodes}


_ARGS = _arg_table()
_MEMO = {ord("p"): "line", ord("g"): "line", ord("q"): 1, ord("h"): 1, ord("r"): 4, ord("j"): 4}
_TWO_LINES = {ord("c"), ord("i")}                  # GLOBAL and INST: module and name, a line each
_STOP = ord(".")


def check_opcodes(buf, start: int, path: Path) -> int:
    """Walk one pickle's opcodes in ``buf`` from ``start`` to its STOP before it is unpickled,
    refusing memo indices beyond the opcodes read so far: CPython's unpickler grows its memo to the
    largest index it is given, so a 9-byte pickle could otherwise take gigabytes), and lengths that run
    past the data (read from a file, the unpickler allocates them first). Returns where the pickle
    ends; other malformed pickles are left for the unpickler to report (nothing was allocated)."""
    pos, end, n = start, len(buf), 0
    while pos < end:
        code = buf[pos]
        pos += 1
        n += 1
        kind = _ARGS.get(code)
        if kind is None or code == _STOP:
            return pos
        memo = _MEMO.get(code)
        if memo is not None:
            if memo == "line":
                nl = buf.find(b"\n", pos)
                raw = bytes(buf[pos:nl]) if nl >= 0 else b""
                idx = int(raw) if raw.isdigit() and len(raw) < 20 else -1
            else:
                idx = int.from_bytes(buf[pos:pos + memo], "little")
            if not 0 <= idx <= n:
                raise BadCheckpoint(f"memo index {idx if idx >= 0 else repr(raw[:20])} after {n} opcodes; no pickler writes that")
        if kind >= 0:
            pos += kind
        elif kind == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if code in _TWO_LINES else 1):
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    return end
                pos = nl + 1
        else:
            width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                     pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}[kind]
            length = int.from_bytes(buf[pos:pos + width], "little", signed=kind == pickletools.TAKEN_FROM_ARGUMENT4)
            if length < 0:
                return end
            pos += width + length
            if pos > end:      # refused here: the unpickler would first allocate ``length`` bytes
                raise pickle.UnpicklingError(f"an argument of {length:,} bytes runs past the end of the pickle data")
    return end


class BoundedReader:
    """A file object that never hands out (or allocates for) more than the file holds."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.readline(min(left, 1 << 20) if limit is None or limit < 0 else min(limit, left))

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        left = max(0, self.size - self.f.tell())
        return self.f.readinto(view[:left]) if len(view) > left else self.f.readinto(view)

    def peek(self, n: int = 1) -> bytes:
        return self.f.peek(n)[: max(0, self.size - self.f.tell())]

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)


class CheckpointUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint into inert objects; refuses every other global."""

    def __init__(self, file, path: Path, storages: dict[str, StorageRef] | None = None):
        super().__init__(file)
        self._path = path
        self._table = _allowed()
        self.storages: dict[str, StorageRef] = {} if storages is None else storages

    def find_class(self, module: str, name: str):
        # protocol-2 pickles spell Python 3 names the Python 2 way (__builtin__.eval)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._table[(module, name)]
        except KeyError:
            raise UnsafeContentError(
                f"refusing to import {module}.{name} from {self._path}: not a plain state dict; if you trust this file, "
                f"load it with torch.load(weights_only=False) and re-save its state_dict with torch.save"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise BadCheckpoint(f"persistent id {pid!r} is not a torch storage")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(stype, StorageType):
            raise BadCheckpoint(f"storage {key!r} has type {stype!r}, not a torch storage class")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = StorageRef(key, stype.dtype, _int(numel, f"storage {key!r} size"))
        elif ref.dtype != stype.dtype:
            raise BadCheckpoint(f"storage {key!r} is read both as {ref.dtype} and as {stype.dtype}")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:   # legacy storage view: (view_key, offset, size) into the root storage
            _vkey, voffset, _vsize = view
            return StorageRef(ref.key, ref.dtype, ref.numel, _int(voffset, "a storage view offset"))
        return ref


# -- writing ------------------------------------------------------------------------------

class StateDictPickler:
    """Hand-written protocol-2 pickle of ``{name: _rebuild_tensor_v2(storage, offset, shape, stride, …)}``."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self._memo: dict[tuple[str, str], int] = {}

    def _put(self) -> int:
        idx = len(self._memo)
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)
        return idx

    def global_(self, module: str, name: str) -> None:
        idx = self._memo.get((module, name))
        if idx is not None:
            self.out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
            return
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        self._memo[(module, name)] = self._put()

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(1 << 31) <= v < (1 << 31):
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def str_(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"
            return
        if len(values) > 3:
            self.out += b"("
        for v in values:
            self.int_(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")

    def state_dict(self, entries: list[tuple[str, str, str, int, int, tuple, tuple]]) -> bytes:
        """``entries``: (name, storage key, dtype, storage numel, offset, shape, stride)."""
        self.out += b"}"
        for start in range(0, len(entries), 1000):
            self.out += b"("
            for name, key, dt, numel, offset, shape, stride in entries[start:start + 1000]:
                self.str_(name)
                self.global_("torch._utils", "_rebuild_tensor_v2")
                self.out += b"(("
                self.str_("storage")
                self.global_("torch", dtypes.get(dt).storage)
                self.str_(key)
                self.str_("cpu")
                self.int_(numel)
                self.out += b"tQ"
                self.int_(offset)
                self.int_tuple(shape)
                self.int_tuple(stride)
                self.out += b"\x89"
                self.global_("collections", "OrderedDict")
                self.out += b")RtR"
            self.out += b"u"
        self.out += b"."
        return bytes(self.out)
