"""Reading Lua Torch7 files (``torch.save``): binary or ASCII, any long size and byte order.

The layout follows torch7's File.lua (objects) and THDiskFile.c (primitives): a stream of
typed objects; tables, torch objects and functions carry a reference index so that shared
and cyclic objects are written once. Storage data is never copied in binary mode when
it can be used in place: arrays are views of a read-only map of the file.

Every size read from the file is checked against the bytes that are left before
anything is allocated, and every tensor view is checked against its storage, so a
corrupt file gives a :class:`FormatError` naming the byte offset, never a huge
allocation or an out-of-bounds read.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
import sys
from pathlib import Path

from ..errors import FormatError
from .objects import LuaFunction, LuaObject, LuaTable, T7File, T7Storage, T7Tensor
from .streams import _INT, _SKIP, AsciiStream, BinaryStream

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN, FUNCTION, LEGACY_RECUR_FUNCTION, RECUR_FUNCTION = range(9)
TYPE_NAMES = ("nil", "number", "string", "table", "torch object", "boolean", "function", "function", "function")

# Element type of each torch.<T>Tensor / torch.<T>Storage; Cuda<T> has the same layout.
ELEMENTS = {
    "Byte": "uint8", "Char": "int8", "Short": "int16", "Int": "int32", "Long": "int64",
    "Float": "float32", "Double": "float64", "Half": "float16",
}
_TORCH_CLASS = re.compile(r"torch\.(Cuda)?([A-Za-z]*?)(Tensor|Storage)")

DEFAULT_MAX_DEPTH = 5000
MAX_RANK = 64                       # tensor dimensions read (numpy's own limit)


def torch_class(name: str) -> tuple[str, str] | None:
    """``("Tensor" | "Storage", dtype)`` for a torch tensor or storage class name, else None."""
    m = _TORCH_CLASS.fullmatch(name)
    if not m:
        return None
    elem = m.group(2)
    if m.group(1) and elem == "":
        elem = "Float"              # torch.CudaTensor holds float32
    if elem not in ELEMENTS:
        return None
    return m.group(3), ELEMENTS[elem]


# --------------------------------------------------------------------------------------
# Objects


class ObjectReader:
    """Reads typed objects from a stream, keeping the reference table across objects."""

    def __init__(self, stream, max_depth: int = DEFAULT_MAX_DEPTH):
        self.s = stream
        self.path = stream.path
        self.max_depth = max_depth
        self.memo: dict[int, object] = {}
        self.count = 0              # indexed objects read so far (the writer's counter)

    def _index(self):
        """Read a reference index: the object already read, or (None, new index)."""
        at = self.s.pos
        idx = self.s.int("reference index")
        if idx in self.memo:
            return self.memo[idx], idx
        if idx != self.count + 1:
            raise self.s.fail(
                f"reference index {idx} refers to no object read so far ({self.count} objects; a new object "
                f"would have index {self.count + 1}); the file is corrupt", at)
        self.count += 1
        return None, idx

    def _string(self, what: str) -> bytes:
        at = self.s.pos
        n = self.s.int(f"{what} length")
        self.s.check_count(n, 1, f"{what} length", at)
        return self.s.raw(n, what)

    def read(self, depth: int = 0):
        s = self.s
        if depth > self.max_depth:
            raise s.fail(f"objects nested more than {self.max_depth} levels deep; the file is corrupt "
                         f"(or raise max_depth)")
        at = s.pos
        tag = s.int("type tag")
        if tag == NIL:
            return None
        if tag == NUMBER:
            return s.double("number")
        if tag == STRING:
            return self._string("string")
        if tag == BOOLEAN:
            return s.int("boolean") == 1
        if tag == FUNCTION:
            code = self._string("function bytecode")
            return LuaFunction(code, self.read(depth + 1), FUNCTION)
        if tag in (TABLE, TORCH, LEGACY_RECUR_FUNCTION, RECUR_FUNCTION):
            seen, idx = self._index()
            if seen is not None:
                return seen
            if tag == TABLE:
                return self._table(idx, depth)
            if tag == TORCH:
                return self._torch(idx, at, depth)
            code = self._string("function bytecode")
            fn = LuaFunction(code, None, tag)
            self.memo[idx] = fn
            fn.upvalues = self.read(depth + 1)
            return fn
        raise s.fail(f"unknown type tag {tag} (a Lua Torch7 object starts with 0..8)", at)

    def _table(self, idx: int, depth: int) -> LuaTable:
        s = self.s
        t = LuaTable()
        self.memo[idx] = t
        at = s.pos
        n = s.int("table size")
        s.check_count(n, 8 if s.binary else 4, "table size", at)
        for _ in range(n):
            kat = s.pos
            k = self.read(depth + 1)
            v = self.read(depth + 1)
            if k is None or (isinstance(k, float) and math.isnan(k)):
                raise s.fail(f"table key {'nil' if k is None else 'NaN'} (Lua tables cannot hold it)", kat)
            if v is None:
                t.pop(k, None)
            else:
                t[k] = v
        return t

    def _torch(self, idx: int, at: int, depth: int):
        s = self.s
        first = self._string("class name")
        version: int | float | None = None
        if first.startswith(b"V "):
            text = first[2:]
            try:
                num = float(text)
            except ValueError:
                raise s.fail(f"malformed class version {first[:40]!r}", at) from None
            version = int(num) if _INT.fullmatch(text) else num
            name_raw = self._string("class name")
        else:
            name_raw = first
        name = name_raw.decode("latin-1")
        if not name or not name.isprintable():
            raise s.fail(f"malformed class name {name_raw[:40]!r} of the torch object", at)
        kind = torch_class(name)
        if kind is not None:
            if kind[0] == "Storage":
                return self._storage(idx, name, kind[1])
            return self._tensor(idx, name, kind[1], depth)
        obj = LuaObject(name, None, version)
        self.memo[idx] = obj
        if name in ("tds.Hash", "tds_hash", "tds.Vec"):
            cat = s.pos
            n = s.long(f"{name} size")
            s.check_count(n, 4 if name == "tds.Vec" else 8, f"{name} size", cat)
            entries = LuaTable()
            for i in range(n):
                if name == "tds.Vec":
                    entries[float(i + 1)] = self.read(depth + 1)
                else:
                    kat = s.pos
                    k = self.read(depth + 1)
                    if k is None:
                        raise s.fail(f"nil key in {name}", kat)
                    entries[k] = self.read(depth + 1)
            obj.fields = entries
            return obj
        if name == "nn.GPU":                # writes a header table, then its fields
            obj.payload = self.read(depth + 1)
        fat = s.pos
        if fat + 4 <= s.size and s.binary:
            (peek,) = s._int.unpack_from(s.buf, fat)
        else:
            save = s.pos
            try:
                peek = s.int("field table")
            finally:
                s.pos = save
        if peek != TABLE:
            what = TYPE_NAMES[peek] if 0 <= peek < len(TYPE_NAMES) else f"type tag {peek}"
            raise s.fail(
                f"class {name} (object at byte {at}) is followed by a {what} instead of its field table: "
                f"the class has its own serialization, which modelport cannot read", fat)
        obj.fields = self.read(depth + 1)
        return obj

    def _storage(self, idx: int, name: str, dtype: str) -> T7Storage:
        s = self.s
        at = s.pos
        n = s.long("storage size")
        if n < 0:
            raise s.fail(f"negative storage size {n}", at)
        data, foff = s.array(n, dtype, f"{name} size", at)
        st = T7Storage(name, dtype, data, foff)
        self.memo[idx] = st
        return st

    def _tensor(self, idx: int, name: str, dtype: str, depth: int) -> T7Tensor:
        s = self.s
        at = s.pos
        nd = s.int("tensor nDimension")
        s.check_count(nd, 2 * s.long_size if s.binary else 4, "tensor nDimension", at)
        if nd > MAX_RANK:
            raise s.fail(f"{name} has {nd} dimensions (at most {MAX_RANK} are read); the file is corrupt", at)
        size = s.longs(nd, "tensor sizes")
        stride = s.longs(nd, "tensor strides")
        oat = s.pos
        offset = s.long("tensor storage offset") - 1
        t = T7Tensor(name, dtype, tuple(size), tuple(stride), offset, None)
        self.memo[idx] = t
        sat = s.pos
        storage = self.read(depth + 1)
        if storage is not None and not isinstance(storage, T7Storage):
            raise s.fail(f"{name} has a {type(storage).__name__} where its storage should be", sat)
        if isinstance(storage, T7Storage) and storage.dtype != dtype:
            raise s.fail(f"{name} is stored in a {storage.class_name}", sat)
        t.storage = storage
        if any(v < 0 for v in size):
            raise s.fail(f"{name} has a negative size {list(size)}", at)
        if any(v == 0 for v in size):       # TH ends a tensor's dimensions at the first size < 1
            raise s.fail(f"{name} has a dimension of size 0 in {list(size)} (Torch7 writes empty tensors "
                         f"with nDimension 0)", at)
        if any(v < 0 for v in stride):
            raise s.fail(f"{name} has a negative stride {list(stride)}", at)
        numel = math.prod(size) if nd else 0
        if numel:
            if offset < 0:
                raise s.fail(f"{name} has storage offset {offset + 1} (offsets start at 1)", oat)
            if storage is None:
                raise s.fail(f"{name} of size {list(size)} has no storage", sat)
            last = offset + sum((n - 1) * st for n, st in zip(size, stride))
            if last >= storage.size:
                raise s.fail(
                    f"{name} of size {list(size)}, stride {list(stride)}, offset {offset + 1} runs off its "
                    f"storage of {storage.size} elements (element {last + 1} needed)", at)
        return t


# --------------------------------------------------------------------------------------
# Files


def describe_foreign(head: bytes) -> str | None:
    """What a file that is not Lua Torch7 is, from its first bytes, when that can be told."""
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself; fetch the real file with `git lfs pull`"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch checkpoint saved by torch.save, not Lua Torch7); open it as format 'pt'"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a legacy PyTorch checkpoint, not Lua Torch7); open it as format 'pt'"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return "an HTML page (a failed download?), not a Lua Torch7 file"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file, not Lua Torch7; open it as format 'safetensors'"
    if head.startswith(b"GGUF"):
        return "a GGUF file, not Lua Torch7"
    return None


_ASCII_HEAD = re.compile(rb"[ \t\r\n]*[0-8][ \t\r]*\n")


def detect_mode(head: bytes) -> tuple[str, bool] | None:
    """("binary", big_endian) or ("ascii", False) when the first bytes look like Lua Torch7."""
    if len(head) >= 4:
        if 0 <= struct.unpack_from("<i", head)[0] <= 8:
            return "binary", False
        if 0 <= struct.unpack_from(">i", head)[0] <= 8:
            return "binary", True
    if _ASCII_HEAD.match(head):
        return "ascii", False
    return None


def _map(path: Path):
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)     # a FIFO must not block the open
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        raise FormatError(f"{path}: not a regular file (a pipe, device or socket); modelport reads only files")
    os.set_blocking(fd, True)
    with open(fd, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:          # an empty file cannot be mapped
            return b""


def read_t7(path, long_size: int | None = None, endian: str | None = None, mode: str | None = None,
            max_depth: int = DEFAULT_MAX_DEPTH) -> T7File:
    """Read the first object of a Lua Torch7 file, as ``torch.load`` does.

    ``long_size`` (4 or 8), ``endian`` ("little" or "big") and ``mode`` ("binary" or
    "ascii") force what is otherwise detected.
    """
    path = Path(path)
    if long_size not in (None, 4, 8):
        raise FormatError(f"{path}: long size must be 4 or 8, not {long_size}")
    if endian not in (None, "little", "big"):
        raise FormatError(f"{path}: byte order must be 'little' or 'big', not {endian!r}")
    if mode not in (None, "binary", "ascii"):
        raise FormatError(f"{path}: t7 mode must be 'binary' or 'ascii', not {mode!r}")
    try:
        buf = _map(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a Lua Torch7 file") from None
    if len(buf) == 0:
        raise FormatError(f"{path}: an empty file at byte 0, not a Lua Torch7 file")
    head = bytes(buf[:64])
    detected = detect_mode(head)
    if mode is None:
        if detected is None:
            what = describe_foreign(head) or "not a Lua Torch7 file (it does not start with a type tag 0..8)"
            raise FormatError(f"{path}: {what} (at byte 0)")
        mode = detected[0]
    if mode == "ascii":
        return _read_file(AsciiStream(buf, path), max_depth)
    if endian is None:
        big = detected[1] if detected and detected[0] == "binary" else False
    else:
        big = endian == "big"
    if long_size:
        return _read_file(BinaryStream(buf, path, long_size, big), max_depth)
    # Long size is not recorded: 8 (LP64) unless that fails and 4 reads the whole file exactly.
    try:
        result = _read_file(BinaryStream(buf, path, 8, big), max_depth)
        if result.trailing_bytes == 0:
            return result
    except FormatError as exc:
        result, error = None, exc
    try:
        narrow = _read_file(BinaryStream(buf, path, 4, big), max_depth)
        if narrow.trailing_bytes == 0:
            return narrow
    except FormatError:
        pass
    if result is not None:
        return result
    raise error


def _read_file(stream, max_depth: int) -> T7File:
    reader = ObjectReader(stream, max_depth)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 3 * max_depth + 1000))
    try:
        root = reader.read()
        end = stream.pos
        trailing = _rest(stream)
        notes = []
        if trailing:
            more = 0
            try:
                while _rest(stream):
                    reader.read()
                    more += 1
                complete = True
            except FormatError:
                complete = False
            if more and complete:
                notes.append(f"the file holds {more + 1} objects in a row; only the first is read, as torch.load does")
            else:
                notes.append(
                    f"{trailing} bytes after the first object (which ends at byte {end}) are ignored, as torch.load "
                    f"does ({more} further complete object{'s' if more != 1 else ''} before "
                    f"{'the end' if complete else 'an unreadable one'})")
    except RecursionError:
        raise stream.fail("objects nested too deeply to read") from None
    finally:
        sys.setrecursionlimit(old_limit)
    if stream.binary and stream.long_size == 4:
        notes.append("written with 4-byte longs (Windows or a 32-bit system)")
    if stream.binary and stream.big_endian:
        notes.append("big-endian byte order")
    return T7File(root, stream.binary, stream.long_size, stream.big_endian, trailing, notes)


def _rest(stream) -> int:
    """Bytes after the current position (whitespace only does not count in ASCII mode)."""
    if stream.binary:
        return stream.size - stream.pos
    stream.pos = _SKIP.match(stream.buf, stream.pos).end()
    return stream.size - stream.pos
