"""safetensors: an 8-byte header length, a JSON header, then raw little-endian tensor bytes.

Read and written here without the safetensors package, so that tensor bytes move
from file to file in the kernel. Tied tensors are stored once and recorded in the
metadata as ``alias -> kept`` (the convention of ``safetensors.torch.save_model``).

Tensor data follows the header without gaps, so the header's length is the one free
choice of the layout. ``copy_file_range`` runs faster when source and destination
offsets agree modulo 64 KiB, so the header is padded with spaces (as the format
allows, under 64 KiB, keeping data 8-aligned) to put as many bytes of large tensors
as one length can at their source offsets modulo 64 KiB.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

from .. import dtypes
from ..errors import FormatError, UnsupportedError
from ._registry import register
from ._follow import follow
from ._stream import ALIGN_MIN, ALIGN_MOD, Sink, write_tensor
from ._untrusted import MAX_RANK, load_json, open_regular, still_whole
from .base import Format, ReadOptions, Span, TensorInfo, TensorSource, WriteOptions, WriteResult, file_size, read_head, release_map

_MAX_HEADER = 100 << 20


class SafetensorsSource(TensorSource):
    format = "safetensors"

    def __init__(self, path: Path):
        super().__init__(path)
        size = file_size(path)
        with open_regular(path) as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise FormatError(f"{path}: corrupt safetensors header length {n} in a {size}-byte file; the file is truncated or not safetensors")
            raw = f.read(n)
        if len(raw) != n:
            raise FormatError(f"{path}: truncated safetensors header ({len(raw)} of {n} bytes)")
        header = load_json(raw, path, "corrupt safetensors header, which")
        if not isinstance(header, dict):
            raise FormatError(f"{path}: corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise FormatError(f"{path}: corrupt safetensors header: __metadata__ must be an object of strings")
        self._base = 8 + n
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            info, begin, end = _entry(path, name, entry)
            if self._base + end > size:
                raise FormatError(f"{path}: tensor {name!r} ends at byte {self._base + end} but the file has {size} bytes; the file is truncated")
            self._entries[name] = (info, begin, end)
        self._aliases = {k: v for k, v in meta.items() if k not in self._entries and v in self._entries}
        self.metadata = {k: v for k, v in meta.items() if k not in self._aliases}
        self._mmap: mmap.mmap | None = None

    def names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entries[name][0]

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def span(self, name: str) -> Span:
        _, begin, end = self._entries[name]
        return Span(self.path, self._base + begin, end - begin)

    def read_bytes(self, name: str) -> memoryview:
        _, begin, end = self._entries[name]
        if begin == end:
            return memoryview(b"")
        still_whole(self.path, self._base + end)
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._mmap)[self._base + begin:self._base + end]

    def close(self) -> None:
        self._mmap = release_map(self._mmap)


def _entry(path: Path, name: str, entry) -> tuple[TensorInfo, int, int]:
    """One header entry, every field checked: dtype known, shape of non-negative integers (rank capped),
    two offsets that span exactly the shape's bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: its header entry is {type(entry).__name__}, not an object")
    dt = dtypes.BY_SAFETENSORS.get(entry.get("dtype")) if isinstance(entry.get("dtype"), str) else None
    if dt is None:
        raise FormatError(f"{where}: unsupported or missing dtype {str(entry.get('dtype'))[:20]!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(type(v) is int and v >= 0 for v in shape):
        raise FormatError(f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(v) is int and v >= 0 for v in offsets):
        raise FormatError(f"{where}: data_offsets must be two non-negative integers")
    info = TensorInfo(name, dt.name, tuple(shape))
    begin, end = offsets
    if end - begin != info.nbytes:
        raise FormatError(f"{where}: offsets {begin}..{end} do not fit shape {list(shape)} {dt.name}")
    return info, begin, end


def header_for(source: TensorSource, names: list[str], metadata: dict[str, str], align: bool = False) -> tuple[bytes, int]:
    """The safetensors header (padded to 8 bytes) for ``names`` of ``source`` and the data size.

    ``align``: pad it further (under 64 KiB) so the most bytes of tensors of at least ``ALIGN_MIN``
    bytes start at their source span's offset modulo ``ALIGN_MOD``.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in names:
        info = source.info(name)
        if info.dtype not in dtypes.DTYPES:
            raise UnsupportedError(f"{source.path}: tensor {name!r} has dtype {info.dtype}, which safetensors cannot hold")
        header[name] = {"dtype": dtypes.get(info.dtype).safetensors, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    pad = -len(raw) % 8
    if align:
        pad = _aligning_pad(source, names, header, 8 + len(raw), pad)
    raw += b" " * pad
    return struct.pack("<Q", len(raw)) + raw, offset


def _aligning_pad(source: TensorSource, names: list[str], header: dict, base: int, pad: int) -> int:
    """The header padding (≡ ``pad`` mod 8, under ALIGN_MOD) that aligns the most large-tensor bytes."""
    weight: dict[int, int] = {}
    for name in names:
        begin, end = header[name]["data_offsets"]
        if end - begin < ALIGN_MIN:
            continue
        span = source.span(name)
        if span is None:
            continue
        want = (span.offset - base - begin) % ALIGN_MOD
        if want % 8 == pad:       # reachable with the data start still 8-aligned
            weight[want] = weight.get(want, 0) + end - begin
    return max(weight, key=lambda w: (weight[w], -w)) if weight else pad

def write_file(source: TensorSource, dst: Path, names: list[str] | None = None, metadata: dict[str, str] | None = None,
               progress=None, align: bool = True) -> None:
    names = source.names() if names is None else names
    meta = dict(source.metadata if metadata is None else metadata)
    for alias, kept in source.aliases().items():
        if kept in names:
            meta[alias] = kept
    head, data_size = header_for(source, names, meta, align)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    sink = None
    try:
        hashed = follow(dst)        # the manifest's hash of the file, taken from the bytes as they are written
        sink = Sink(fd, hashed.hasher)
        sink.reserve(len(head) + data_size)
        sink.write(head)
        for name in names:
            write_tensor(source, name, sink)
            if progress:
                progress(source.info(name).nbytes)
        hashed.done(*sink.close())
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        os.close(fd)


class Safetensors(Format):
    id = "safetensors"
    description = "safetensors file (tensors + string metadata)"
    suffixes = (".safetensors",)

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        head = read_head(path, 16)
        if len(head) < 9:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return 2 <= n <= max(2, file_size(path) - 8) and head[8:9] == b"{"

    def open(self, path: Path, options: ReadOptions) -> SafetensorsSource:
        return SafetensorsSource(path)

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        write_file(source, dst, progress=progress, align=options.align)
        return WriteResult((dst,))


register(Safetensors())
