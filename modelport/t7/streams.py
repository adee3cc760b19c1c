"""File primitives of Lua Torch7 serialization (THDiskFile): ints, longs, doubles, raw bytes, arrays.

Binary mode reads native bytes of a given long size and byte order; arrays are views of the
file's map when no conversion is needed. ASCII mode reads whitespace-separated number tokens
(a whole line at a time, never byte by byte) and raw byte runs of known length, consuming one
newline after every array as the default auto-spacing DiskFile does.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import FormatError

_NUMPY = {"uint8": "u1", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
          "float32": "f4", "float64": "f8", "float16": "f2"}

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

    def array(self, n: int, dtype: str, what: str, at: int):
        """n elements of ``dtype`` as a 1-D little-endian array and the file offset of their bytes
        (None when they had to be converted). ``at``: where the count was read, for errors."""
        code = _NUMPY[dtype]
        if dtype == "int64" and self.long_size == 4:
            code = "i4"
        file_dtype = np.dtype(self.e + code)
        self.check_count(n, file_dtype.itemsize, what, at)
        if n == 0:
            return np.empty(0, dtype="<" + _NUMPY[dtype]), None
        start = self.pos
        arr = np.frombuffer(self.buf, dtype=file_dtype, count=n, offset=start)
        self.pos += n * file_dtype.itemsize
        target = np.dtype("<" + _NUMPY[dtype])
        if arr.dtype != target:
            return arr.astype(target), None
        return arr, start


_WS = b" \t\n\r\v\f"
_CHUNK = 1 << 20                    # ASCII values parsed per step
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

    def array(self, n: int, dtype: str, what: str, at: int):
        target = np.dtype("<" + _NUMPY[dtype])
        if dtype in ("uint8", "int8"):
            self.check_count(n, 1, what, at)
            return np.frombuffer(self.raw(n, what), dtype=target), None
        self.check_count(n, 1, what, at)
        if n == 0:
            return np.empty(0, dtype=target), None
        parts = []                  # parsed a chunk at a time: memory follows the values actually read
        for start in range(0, n, _CHUNK):
            parts.append(self._numbers(self._tokens(min(_CHUNK, n - start), what), dtype, target, what, at))
        self._eol()
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), None

    def _numbers(self, toks: list[bytes], dtype: str, target, what: str, at: int):
        raw = np.array(toks)
        try:
            if dtype.startswith("int"):
                if not all(_INT.fullmatch(t) for t in toks):
                    raise ValueError("not an integer")
                values = raw.astype(np.int64)
                info = np.iinfo(target)
                if values.min() < info.min or values.max() > info.max:
                    raise ValueError("out of range")
                return values.astype(target)
            try:
                values = raw.astype(np.float64)
            except ValueError:
                values = np.array([_float(t) for t in toks], dtype=np.float64)
            with np.errstate(over="ignore"):
                if dtype == "float16":      # read as a float, then converted to half, as TH does
                    return values.astype(np.float32).astype(target)
                return values.astype(target)
        except (ValueError, OverflowError, TypeError) as exc:
            raise self.fail(f"malformed {what} ({dtype} values expected: {exc})", at) from None

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
                head = b" ".join(parts[:need])
                if chunk.startswith(head):      # single spaces, as Torch writes: no per-token work
                    out.extend(parts[:need])
                    self.pos += len(head)
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
