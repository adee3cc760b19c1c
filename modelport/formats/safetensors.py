"""safetensors: an 8-byte header length, a JSON header, then raw little-endian tensor bytes.

Read and written here without the safetensors package, so that tensor bytes move
from file to file in the kernel. Tied tensors are stored once and recorded in the
metadata as ``alias -> kept`` (the convention of ``safetensors.torch.save_model``).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

from .. import dtypes
from ..errors import FormatError, UnsupportedError
from . import register
from ._stream import write_tensor
from .base import Format, ReadOptions, Span, TensorInfo, TensorSource, WriteOptions, file_size, read_head, release_map

_MAX_HEADER = 100 << 20


class SafetensorsSource(TensorSource):
    format = "safetensors"

    def __init__(self, path: Path):
        super().__init__(path)
        size = file_size(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise FormatError(f"{path}: corrupt safetensors header length {n} in a {size}-byte file; the file is truncated or not safetensors")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{path}: corrupt safetensors header ({exc})") from exc
        if not isinstance(header, dict):
            raise FormatError(f"{path}: corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            try:
                dt = dtypes.BY_SAFETENSORS[entry["dtype"]].name
                shape = tuple(int(s) for s in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except KeyError as exc:
                raise FormatError(f"{path}: tensor {name!r}: unsupported or missing dtype/shape/offsets ({exc})") from exc
            except (TypeError, ValueError) as exc:
                raise FormatError(f"{path}: tensor {name!r}: malformed header entry ({exc})") from exc
            info = TensorInfo(name, dt, shape)
            if end - begin != info.nbytes or begin < 0 or any(s < 0 for s in shape):
                raise FormatError(f"{path}: tensor {name!r}: offsets {begin}..{end} do not fit shape {list(shape)} {dt}")
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
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._mmap)[self._base + begin:self._base + end]

    def close(self) -> None:
        self._mmap = release_map(self._mmap)


def header_for(source: TensorSource, names: list[str], metadata: dict[str, str]) -> tuple[bytes, int]:
    """The safetensors header (padded to 8 bytes) for ``names`` of ``source`` and the data size."""
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
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_file(source: TensorSource, dst: Path, names: list[str] | None = None, metadata: dict[str, str] | None = None, progress=None) -> None:
    names = source.names() if names is None else names
    meta = dict(source.metadata if metadata is None else metadata)
    for alias, kept in source.aliases().items():
        if kept in names:
            meta[alias] = kept
    head, _ = header_for(source, names, meta)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, head)
        for name in names:
            write_tensor(source, name, fd)
            if progress:
                progress(source.info(name).nbytes)
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

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> None:
        write_file(source, dst, progress=progress)


register(Safetensors())
