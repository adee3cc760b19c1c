"""Reading Lua Torch7 files (``torch.save``): binary or ASCII, any long size and byte order.

The layout is described in docs/t7-format.md of the shared notes: a stream of typed
objects; tables, torch objects and functions carry a reference index so that shared
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

import numpy as np

from ..errors import FormatError
from .objects import LuaFunction, LuaObject, LuaTable, T7File, T7Storage, T7Tensor

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN, FUNCTION, LEGACY_RECUR_FUNCTION, RECUR_FUNCTION = range(9)
TYPE_NAMES = ("nil", "number", "string", "table", "torch object", "boolean", "function", "function", "function")

# Element type of each torch.<T>Tensor / torch.<T>Storage; Cuda<T> has the same layout.
ELEMENTS = {
    "Byte": "uint8", "Char": "int8", "Short": "int16", "Int": "int32", "Long": "int64",
    "Float": "float32", "Double": "float64", "Half": "float16",
}
_NUMPY = {"uint8": "u1", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
          "float32": "f4", "float64": "f8", "float16": "f2"}
_TORCH_CLASS = re.compile(r"torch\.(Cuda)?([A-Za-z]*?)(Tensor|Storage)")

DEFAULT_MAX_DEPTH = 5000


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
# File primitives


class _Stream:
    """Position, size and error helpers shared by both modes."""

    binary = True

    def __init__(self, buf, path: Path):
        self.buf = buf
        self.path = path
        self.size = len(buf)
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> FormatError:
        return FormatError(f"{self.path}: {what} at byte {self.pos if at is None else at}")

    def truncated(self, what: str, need: int, at: int | None = None) -> FormatError:
        at = self.pos if at is None else at
        return FormatError(
            f"{self.path}: truncated at byte {at}: {what} needs {need} more bytes but the file has "
            f"{max(0, self.size - at)} left; the file is incomplete or corrupt"
        )

    def check_count(self, n: int, min_bytes: float, what: str, at: int) -> None:
        """Refuse a count that is negative or cannot fit in the rest of the file."""
        if n < 0:
            raise self.fail(f"negative {what} {n}", at)
        if n * min_bytes > self.size - self.pos:
            raise FormatError(
                f"{self.path}: {what} {n} at byte {at} cannot fit in the {self.size - self.pos} bytes left "
                f"in the file; the file is truncated or corrupt"
            )


class BinaryStream(_Stream):
    def __init__(self, buf, path: Path, long_size: int = 8, big_endian: bool = False):
        super().__init__(buf, path)
        self.long_size = long_size
        self.big_endian = big_endian
        e = ">" if big_endian else "<"
        self.e = e
        self._int = struct.Struct(e + "i")
        self._long = struct.Struct(e + ("q" if long_size == 8 else "i"))
        self._double = struct.Struct(e + "d")
        self._lchar = "q" if long_size == 8 else "i"

    def _unpack(self, st: struct.Struct, what: str):
        if self.pos + st.size > self.size:
            raise self.truncated(what, st.size)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def int(self, what: str) -> int:
        return self._unpack(self._int, what)

    def long(self, what: str) -> int:
        return self._unpack(self._long, what)

    def longs(self, n: int, what: str) -> tuple[int, ...]:
        if n == 0:
            return ()
        need = n * self.long_size
        if self.pos + need > self.size:
            raise self.truncated(what, need)
        out = struct.unpack_from(f"{self.e}{n}{self._lchar}", self.buf, self.pos)
        self.pos += need
        return out

    def double(self, what: str) -> float:
        return self._unpack(self._double, what)

    def raw(self, n: int, what: str) -> bytes:
        if self.pos + n > self.size:
            raise self.truncated(what, n)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def array(self, n: int, dtype: str, what: str):
        """n elements of ``dtype`` as a 1-D little-endian array and the file offset of their bytes
        (None when they had to be converted)."""
        code = _NUMPY[dtype]
        if dtype == "int64" and self.long_size == 4:
            code = "i4"
        file_dtype = np.dtype(self.e + code)
        at = self.pos
        self.check_count(n, file_dtype.itemsize, what, at)
        if n == 0:
            return np.empty(0, dtype="<" + _NUMPY[dtype]), None
        arr = np.frombuffer(self.buf, dtype=file_dtype, count=n, offset=at)
        self.pos += n * file_dtype.itemsize
        target = np.dtype("<" + _NUMPY[dtype])
        if arr.dtype != target:
            return arr.astype(target), None
        return arr, at


_WS = b" \t\n\r\v\f"
_TOKEN = re.compile(rb"[ \t\n\r\v\f]*([^ \t\n\r\v\f]+)")
_SKIP = re.compile(rb"[ \t\n\r\v\f]*")
_INT = re.compile(rb"[-+]?[0-9]+")
_SPECIAL_FLOATS = {
    b"1.#QNAN": math.nan, b"-1.#QNAN": math.nan, b"1.#IND": math.nan, b"-1.#IND": math.nan,
    b"1.#SNAN": math.nan, b"-1.#SNAN": math.nan, b"1.#INF": math.inf, b"-1.#INF": -math.inf,
    b"nan(ind)": math.nan, b"-nan(ind)": math.nan,
}


class AsciiStream(_Stream):
    """torch.save(..., 'ascii'): numbers as text tokens, strings and byte data as raw bytes."""

    binary = False
    long_size = 8
    big_endian = False

    def _eol(self) -> None:
        # After every array read (a scalar is an array of one) one "\n" is consumed if it is next.
        if self.pos < self.size and self.buf[self.pos] == 10:
            self.pos += 1

    def _token(self, what: str) -> tuple[bytes, int]:
        m = _TOKEN.match(self.buf, self.pos)
        if m is None:
            raise self.truncated(what, 1, self.size)
        self.pos = m.end()
        return m.group(1), m.start(1)

    def _integer(self, what: str, bits: int) -> int:
        tok, at = self._token(what)
        if not _INT.fullmatch(tok):
            raise self.fail(f"expected an integer for {what}, found {tok[:20]!r}", at)
        v = int(tok)
        if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
            raise self.fail(f"{what} {v} is out of range for a {bits}-bit integer", at)
        return v

    def int(self, what: str) -> int:
        v = self._integer(what, 32)
        self._eol()
        return v

    def long(self, what: str) -> int:
        v = self._integer(what, 64)
        self._eol()
        return v

    def double(self, what: str) -> float:
        tok, at = self._token(what)
        v = _float(tok)
        if v is None:
            raise self.fail(f"expected a number for {what}, found {tok[:20]!r}", at)
        self._eol()
        return v

    def longs(self, n: int, what: str) -> tuple[int, ...]:
        if n == 0:
            return ()
        at = self.pos
        self.check_count(n, 1, what, at)
        toks = self._tokens(n, what)
        if not all(_INT.fullmatch(t) for t in toks):
            raise self.fail(f"expected {n} integers for {what}", at)
        out = tuple(int(t) for t in toks)
        if any(not -(1 << 63) <= v < (1 << 63) for v in out):
            raise self.fail(f"{what} out of range for 64-bit integers", at)
        self._eol()
        return out

    def raw(self, n: int, what: str) -> bytes:
        if self.pos + n > self.size:
            raise self.truncated(what, n)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        if n:
            self._eol()
        return out

    def array(self, n: int, dtype: str, what: str):
        at = self.pos
        target = np.dtype("<" + _NUMPY[dtype])
        if dtype in ("uint8", "int8"):
            self.check_count(n, 1, what, at)
            return np.frombuffer(self.raw(n, what), dtype=target), None
        self.check_count(n, 1, what, at)
        if n == 0:
            return np.empty(0, dtype=target), None
        toks = self._tokens(n, what)
        self._eol()
        raw = np.array(toks)
        try:
            if dtype.startswith("int"):
                if not all(_INT.fullmatch(t) for t in toks):
                    raise ValueError("not an integer")
                values = raw.astype(np.int64)
                info = np.iinfo(target)
                if values.min() < info.min or values.max() > info.max:
                    raise ValueError("out of range")
                return values.astype(target), None
            try:
                values = raw.astype(np.float64)
            except ValueError:
                values = np.array([_float(t) for t in toks], dtype=np.float64)
            if dtype == "float16":
                with np.errstate(over="ignore"):
                    return values.astype(np.float32).astype(target), None
            with np.errstate(over="ignore"):
                return values.astype(target), None
        except (ValueError, OverflowError, TypeError) as exc:
            raise self.fail(f"malformed {what} ({n} {dtype} values expected: {exc})", at) from None

    def _tokens(self, n: int, what: str) -> list[bytes]:
        """The next n whitespace-separated tokens, reading whole lines at a time (no per-byte work)."""
        out: list[bytes] = []
        buf = self.buf
        while len(out) < n:
            self.pos = _SKIP.match(buf, self.pos).end()
            if self.pos >= self.size:
                raise self.truncated(f"{what} ({n} values, {len(out)} found)", 1)
            need = n - len(out)
            nl = buf.find(b"\n", self.pos)
            end = self.size if nl < 0 else nl
            limit = self.pos + 40 * need + 64
            if end > limit:         # a very long line: do not split more of it than needed
                cut = buf.rfind(b" ", self.pos, limit)
                if cut <= self.pos:
                    tok, _ = self._token(what)
                    out.append(tok)
                    continue
                end = cut
            chunk = bytes(buf[self.pos:end])
            parts = chunk.split()
            if len(parts) <= need:
                out.extend(parts)
                self.pos += len(chunk.rstrip(_WS))
            else:
                for _ in range(need):
                    tok, _at = self._token(what)
                    out.append(tok)
        return out


def _float(tok: bytes) -> float | None:
    try:
        return float(tok)
    except ValueError:
        return _SPECIAL_FLOATS.get(tok)


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
        data, foff = s.array(n, dtype, f"{name} of {n} elements")
        if n < 0:
            raise s.fail(f"negative storage size {n}", at)
        st = T7Storage(name, dtype, data, foff)
        self.memo[idx] = st
        return st

    def _tensor(self, idx: int, name: str, dtype: str, depth: int) -> T7Tensor:
        s = self.s
        at = s.pos
        nd = s.int("tensor nDimension")
        s.check_count(nd, 2 * s.long_size if s.binary else 4, "tensor nDimension", at)
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
    with open(path, "rb") as f:
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
    tries = [long_size] if long_size else [8, 4]
    first_error = None
    fallback = None
    for ls in tries:
        try:
            result = _read_file(BinaryStream(buf, path, ls, big), max_depth)
        except FormatError as exc:
            first_error = first_error or exc
            continue
        if result.trailing_bytes == 0:
            return result
        fallback = fallback or result
    if fallback is not None:
        return fallback
    if mode is not None and detected is None:
        what = describe_foreign(head)
        if what:
            raise FormatError(f"{path}: {what} (at byte 0)")
    raise first_error


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
