"""The zip container of torch >= 1.6 checkpoints, read and written without torch.

Reading: the central directory comes from :mod:`zipfile` (which handles zip64);
each stored (uncompressed) member's data offset is computed from its local header,
so tensor bytes can be mapped or copied in place. Compressed members fall back to
:mod:`zipfile`.

Writing: members are laid out as ``torch.save`` lays them out: data aligned to 64
bytes through an ``FB`` padding extra field, zip64 records where sizes or offsets
pass 4 GiB. :func:`write_pt` writes a whole state dict from any source.

Aligned copies: ``copy_file_range`` between two files of one filesystem runs much
faster when the source and destination offsets agree modulo 64 KiB (measured on
ext4: benchmarks/bench_streaming.py). So a storage of at least ``ALIGN_MIN`` bytes
whose bytes lie in a file gets an ``FB`` field long enough (under 64 KiB) to put its
data at its source offset modulo 64 KiB. Such a file departs from miniz's layout,
from which torch can compute offsets instead of reading each local header
(``config.load.calculate_storage_offsets``), so it is written without the
``.format_version`` record that announces that layout; torch then reads every offset
from its header, which works with any extra-field length.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import dtypes
from ..errors import FormatError
from ._pickle import StateDictPickler
from ._follow import follow
from ._stream import ALIGN_MIN, ALIGN_MOD, Sink, write_tensor
from .base import TensorSource

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_ALIGN = 64
_MAX_PAD = 0xFFFF - 4 - 28    # an extra field is at most 64 KiB - 1, zip64 (up to 28) and the FB header included
_MAX32 = 0xFFFFFFFF
_UTF8, _DESCRIPTOR = 0x0800, 0x0008      # general-purpose flag bits
MAX_INFLATE = 100                         # a compressed member may inflate to this many times its size


@dataclass
class Member:
    name: str
    header_offset: int
    size: int
    compressed: bool
    packed: int = 0             # bytes the member takes in the archive (compressed size)


class ZipReader:
    """Member names, sizes and data offsets of a zip archive."""

    def __init__(self, path: Path, file_size: int):
        self.path = path
        self.file_size = file_size
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, struct.error) as exc:
            raise FormatError(f"{path}: truncated or corrupt zip archive ({exc}); re-download or re-save the file") from exc
        self.members = {i.filename: Member(i.filename, i.header_offset, i.file_size, i.compress_type != zipfile.ZIP_STORED,
                                           i.compress_size) for i in infos}
        self._offsets: dict[str, int] = {}

    def data_offset(self, name: str) -> int:
        """Where member ``name``'s bytes start in the file (stored members only)."""
        off = self._offsets.get(name)
        if off is not None:
            return off
        m = self.members[name]
        if not 0 <= m.header_offset < self.file_size:
            raise FormatError(f"{self.path}: corrupt zip archive: member {name!r} claims to start at byte {m.header_offset} of a {self.file_size}-byte file")
        with open(self.path, "rb") as f:
            f.seek(m.header_offset)
            raw = f.read(_LOCAL.size)
        if len(raw) < _LOCAL.size or raw[:4] != b"PK\x03\x04":
            raise FormatError(f"{self.path}: corrupt zip archive: no local header for member {name!r} at byte {m.header_offset}")
        fields = _LOCAL.unpack(raw)
        off = m.header_offset + _LOCAL.size + fields[9] + fields[10]
        if off + m.size > self.file_size:
            raise FormatError(f"{self.path}: member {name!r} ends at byte {off + m.size} but the file has {self.file_size} bytes; the file is truncated")
        self._offsets[name] = off
        return off

    def read(self, name: str, limit: int | None = None, allow_expanded: bool = False) -> bytes:
        """A whole (small) member's bytes; CRCs are not checked for stored members.

        A compressed member is inflated in chunks and refused past ``limit``, past the size the
        archive claims for it, or past :data:`MAX_INFLATE` times its compressed size unless
        ``allow_expanded`` (a 1 MB archive must not become gigabytes in memory)."""
        m = self.members[name]
        if m.compressed:
            cap = m.size if allow_expanded else min(m.size, max(1 << 20, MAX_INFLATE * m.packed))
            if limit is not None:
                cap = min(cap, limit)
            if m.size > cap:
                why = f"{MAX_INFLATE}x its compressed size; pass --allow-expanded if you trust the file" \
                    if limit is None or m.size <= limit else f"more than {limit} bytes"
                raise FormatError(f"{self.path}: zip member {name!r} would inflate to {m.size:,} bytes, {why}")
            try:
                out = bytearray()
                with zipfile.ZipFile(self.path) as zf, zf.open(name) as f:
                    while True:
                        chunk = f.read(min(1 << 20, cap + 1 - len(out)))
                        if not chunk:
                            break
                        out += chunk
                        if len(out) > cap:
                            raise FormatError(f"{self.path}: zip member {name!r} inflates past the {m.size:,} bytes "
                                              f"the archive claims for it; the file is corrupt")
                return bytes(out)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
                raise FormatError(f"{self.path}: cannot read zip member {name!r} ({str(exc)[:120]})") from exc
        if limit is not None and m.size > limit:
            raise FormatError(f"{self.path}: zip member {name!r} has {m.size:,} bytes, more than the {limit} it can hold")
        off = self.data_offset(name)
        with open(self.path, "rb") as f:
            f.seek(off)
            data = f.read(m.size)
        if len(data) != m.size:
            raise FormatError(f"{self.path}: zip member {name!r} ends past the end of the file; the file is truncated")
        return data


class ZipWriter:
    """Appends stored members to a :class:`~._stream.Sink`, then the central directory.

    With ``crc32=False`` every CRC field is 0 (torch.load does not check them, see
    modelport/formats/pt.py); with ``crc32=True`` the sink takes each member's CRC-32 from the
    bytes as they are written (in its thread, beside the copy). The member's data descriptor is
    written at once with a CRC of 0; the sink's thread writes the real one over it as soon as it has
    it (hashing the final bytes in their place when the output is hashed), so the writer never
    waits; :meth:`close` waits for the last before the central directory repeats them.
    """

    def __init__(self, sink: Sink, prefix: str, crc32: bool):
        self.sink = sink
        self.prefix = prefix
        self.crc32 = crc32
        self._crc32 = _crc32_function() if crc32 else None
        self._central: list[list] = []   # [name, header offset, size, crc, flags]

    @property
    def pos(self) -> int:
        return self.sink.pos

    def _write(self, data) -> None:
        self.sink.write(data)

    def begin(self, name: str, size: int, match: int | None = None) -> None:
        """Write the local header of member ``name`` (``size`` bytes follow).

        The layout is miniz's, byte for byte in length, because torch can compute storage
        offsets from it (``torch.utils.serialization.config.load.calculate_storage_offsets``):
        a zip64 extra field (sizes when ``size`` passes 4 GiB, the header offset when it
        does), the ``FB`` padding field up to the 64-byte data alignment, and, after the
        data of a non-empty member, a data descriptor holding its CRC and sizes.

        With ``match`` (a source offset) the ``FB`` field instead reaches the first position
        congruent to it modulo ``ALIGN_MOD``, when a field can hold the distance; the layout
        then is no longer miniz's (see the module's docstring).
        """
        full = f"{self.prefix}/{name}".encode()
        big_size, big_off = size >= _MAX32, self.pos >= _MAX32
        fields = (struct.pack("<QQ", size, size) if big_size else b"") + (struct.pack("<Q", self.pos) if big_off else b"")
        z64 = struct.pack("<HH", 1, len(fields)) + fields if fields else b""
        base = self.pos + _LOCAL.size + len(full) + len(z64) + 4
        pad = -base % _ALIGN
        if match is not None and (match - base) % ALIGN_MOD <= _MAX_PAD:
            pad = (match - base) % ALIGN_MOD
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad       # "FB" padding, as torch writes
        flags = _UTF8 | (_DESCRIPTOR if size else 0)
        self._central.append([full.decode(), self.pos, size, 0, flags])
        self._write(_LOCAL.pack(b"PK\x03\x04", 45 if fields else 20, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra)) + full + extra)
        self._data_start = self.pos
        if self.crc32 and size:
            self.sink.crc_begin(self._crc32)

    def end(self) -> None:
        """Check the member's length; write its data descriptor (with its CRC-32 when asked)."""
        entry = self._central[-1]
        name, header, size = entry[:3]
        written = self.pos - self._data_start
        if written != size:
            raise RuntimeError(f"zip member {name}: wrote {written} bytes, announced {size}")
        if not size:
            return
        if self.crc32:
            def descriptor(crc: int, entry: list = entry) -> bytes:
                entry[3] = crc
                return _descriptor(crc, size, header)
            self.sink.crc_end(descriptor)        # patched in by the sink's thread: nothing waits here
        else:
            self._write(_descriptor(0, size, header))

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self._write(data)
        self.end()

    def close(self) -> None:
        self.sink.drain()        # every CRC-32 known and patched in
        cd_start = self.pos
        out = bytearray()
        for name, header, size, crc, flags in self._central:
            raw = name.encode()
            z64 = b""
            sz32, off32 = size, header
            if size >= _MAX32:
                z64 += struct.pack("<QQ", size, size)
                sz32 = _MAX32
            if header >= _MAX32:
                z64 += struct.pack("<Q", header)
                off32 = _MAX32
            extra = struct.pack("<HH", 1, len(z64)) + z64 if z64 else b""
            out += _CENTRAL.pack(b"PK\x01\x02", 45 if z64 else 20, 45 if z64 else 20, flags, 0, 0, 0, crc, sz32, sz32,
                                 len(raw), len(extra), 0, 0, 0, 0, off32) + raw + extra
        cd_size = len(out)
        n = len(self._central)
        if cd_start >= _MAX32 or cd_size >= _MAX32 or n >= 0xFFFF:
            z64_eocd = cd_start + cd_size
            out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_start)
            out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_eocd, 1)
            out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, _MAX32, _MAX32, 0)
        else:
            out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_start, 0)
        self._write(out)


def _descriptor(crc: int, size: int, header: int) -> bytes:
    """A member's data descriptor: zip64 sizes where the size or the header offset passes 4 GiB."""
    if size >= _MAX32 or header >= _MAX32:
        return struct.pack("<4sIQQ", b"PK\x07\x08", crc, size, size)
    return struct.pack("<4sIII", b"PK\x07\x08", crc, size, size)


def _crc32_function():
    """zlib-ng's crc32 when installed (the ``fast`` extra: SIMD, several times faster), else zlib's."""
    try:
        from zlib_ng.zlib_ng import crc32
    except ImportError:
        crc32 = zlib.crc32
    return crc32


# -- a whole checkpoint --------------------------------------------------------------------------

def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _plan(source: TensorSource):
    """Storages to write and each name's view: shared storages of the source stay shared."""
    storages: dict[object, list] = {}     # storage id -> [zip key, dtype, numel, source key or tensor name, shared]
    entries: list[tuple] = []
    for name in source.names():
        info = source.info(name)
        sv = source.storage_view(name)
        if sv is not None and info.numel:
            last = sv.offset + sum((s - 1) * d for s, d in zip(info.shape, sv.stride))
            sid = ("s", sv.key)
            if len(sv.stride) == len(info.shape) and last < sv.numel and storages.get(sid, [None, info.dtype])[1] == info.dtype:
                if sid not in storages:
                    storages[sid] = [str(len(storages)), info.dtype, sv.numel, sv.key, True]
                entries.append((name, storages[sid][0], info.dtype, sv.numel, sv.offset, info.shape, tuple(sv.stride)))
                continue
        sid = ("t", name)
        storages[sid] = [str(len(storages)), info.dtype, info.numel, name, False]
        entries.append((name, storages[sid][0], info.dtype, info.numel, 0, info.shape, _contiguous_strides(info.shape)))
    by_name = {e[0]: e for e in entries}
    for alias, kept in source.aliases().items():
        if kept in by_name:
            entries.append((alias,) + by_name[kept][1:])
    return list(storages.values()), entries


def _serialization_id(pkl: bytes, storages: list) -> bytes:
    """40 digits, like torch's; derived from the content so that equal inputs give equal files."""
    digest = hashlib.sha256(pkl + repr([(s[1], s[2]) for s in storages]).encode()).digest()
    return str(int.from_bytes(digest, "big")).encode()[:40].rjust(40, b"0")


def _storage_span(source: TensorSource, src_key: str, shared: bool):
    return source.storage_span(src_key) if shared else source.span(src_key)


def _match(span, nbytes: int) -> int | None:
    """The source offset a storage's data should agree with modulo ALIGN_MOD, or None."""
    if span is None or nbytes < ALIGN_MIN or span.offset % 8:
        return None     # small, not in a file, or not 8-aligned there (the output keeps 8 at least)
    return span.offset


def write_pt(source: TensorSource, dst: Path, crc32: bool = False, progress=None, align: bool = True) -> None:
    """Write ``source`` as a torch.save zip; ``align``: large storages keep their source offset
    modulo 64 KiB (faster kernel copies, at most 64 KiB of padding each)."""
    storages, entries = _plan(source)
    pkl = StateDictPickler().state_dict(entries)
    spans = [_storage_span(source, s[3], s[4]) for s in storages]
    matches = [_match(span, s[2] * dtypes.get(s[1]).itemsize) if align else None for span, s in zip(spans, storages)]
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    sink = None
    try:
        hashed = follow(dst)        # the manifest's hash of the file, taken from the bytes as they are written
        sink = Sink(fd, hashed.hasher)
        sink.reserve(len(pkl) + sum(s[2] * dtypes.get(s[1]).itemsize for s in storages))   # the zip's records come on top
        zw = ZipWriter(sink, "archive", crc32)
        zw.add("data.pkl", pkl)
        if all(m is None for m in matches):
            zw.add(".format_version", b"1")    # miniz's layout holds: torch may compute offsets
        zw.add(".storage_alignment", b"64")
        zw.add("byteorder", b"little")
        for (zkey, dt, numel, src_key, shared), span, match in zip(storages, spans, matches):
            nbytes = numel * dtypes.get(dt).itemsize
            zw.begin(f"data/{zkey}", nbytes, match)
            if span is not None:
                sink.copy(span)
            elif shared:
                data = source.read_storage_bytes(src_key)
                if len(memoryview(data).cast("B")) != nbytes:
                    raise RuntimeError(f"{source.path}: storage {src_key}: reader returned a wrong number of bytes")
                sink.write(data)
            else:
                write_tensor(source, src_key, sink)
            zw.end()
            if progress:
                progress(nbytes)
        zw.add("version", b"3\n")
        zw.add(".data/serialization_id", _serialization_id(pkl, storages))
        zw.close()
        hashed.done(*sink.close())
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        os.close(fd)
