"""A minimal reader and streaming writer for torch.save zip files of plain tensors.

Enough for Meta's ``consolidated.NN.pth`` (a flat dict of contiguous tensors),
without torch: the pickle is read with an allow-listing unpickler that records
where each tensor lies in the zip (so a tensor's bytes can be copied in the
kernel), and written opcode by opcode so that a file is written one tensor at a
time. Files written here load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .. import dtypes
from ..errors import FormatError, UnsafeContentError
from .base import Span, TensorInfo

_ALIGN = 64


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    storage: _Storage
    offset: int                 # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        expect, step = [], 1
        for n in reversed(self.shape):
            expect.append(step)
            step *= n
        return all(n == 1 or s == e for n, s, e in zip(self.shape, self.stride, reversed(expect)))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path):
        super().__init__(f)
        self.path = path

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in dtypes.BY_STORAGE:
            return dtypes.BY_STORAGE[name].name
        raise UnsafeContentError(f"{self.path}: the checkpoint refers to {module}.{name}, which a plain tensor "
                                 "checkpoint does not need; modelport will not import it (use the pt format to inspect it)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError(f"{self.path}: unexpected persistent id {pid!r} in data.pkl")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, str):
            raise FormatError(f"{self.path}: storage {key!r} has an unknown type")
        return _Storage(str(key), dtype, int(numel))


class TorchZipReader:
    """Tensors of a torch.save zip file, lazily: offsets now, bytes on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise FormatError(f"{self.path}: not a readable PyTorch zip checkpoint ({exc})") from exc
        pkl = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise FormatError(f"{self.path}: a zip file without one data.pkl; not a torch.save checkpoint")
        self._prefix = pkl[0][: -len("data.pkl")]
        obj = _Unpickler(io.BytesIO(self._zip.read(pkl[0])), self.path).load()
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items()):
            raise FormatError(f"{self.path}: expected a flat dict of tensors (a state dict)")
        self.tensors: dict[str, TensorRef] = dict(obj)
        self._offsets: dict[str, int] = {}
        self._fd = os.open(self.path, os.O_RDONLY)

    def info(self, name: str) -> TensorInfo:
        ref = self.tensors[name]
        return TensorInfo(name, ref.storage.dtype, ref.shape)

    def _storage_offset(self, key: str) -> int:
        if key not in self._offsets:
            try:
                zi = self._zip.getinfo(f"{self._prefix}data/{key}")
            except KeyError:
                raise FormatError(f"{self.path}: storage {key} is missing from the archive; the file is damaged") from None
            if zi.compress_type != zipfile.ZIP_STORED:
                raise FormatError(f"{self.path}: storage {key} is compressed, which torch.save never does")
            head = os.pread(self._fd, 30, zi.header_offset)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise FormatError(f"{self.path}: bad zip local header for storage {key}")
            n_name, n_extra = struct.unpack("<HH", head[26:30])
            self._offsets[key] = zi.header_offset + 30 + n_name + n_extra
        return self._offsets[key]

    def span(self, name: str) -> Span | None:
        ref = self.tensors[name]
        if not ref.contiguous:
            return None
        item = dtypes.get(ref.storage.dtype).itemsize
        nbytes = self.info(name).nbytes
        if (ref.offset + self.info(name).numel) > ref.storage.numel and nbytes:
            raise FormatError(f"{self.path}: tensor {name!r} reaches past the end of its storage")
        return Span(self.path, self._storage_offset(ref.storage.key) + ref.offset * item, nbytes)

    def read_bytes(self, name: str):
        span = self.span(name)
        if span is not None:
            data = os.pread(self._fd, span.nbytes, span.offset)
            if len(data) != span.nbytes:
                raise FormatError(f"{self.path}: tensor {name!r} is cut short; the file is truncated")
            return data
        import numpy as np

        ref = self.tensors[name]
        dt = np.dtype(dtypes.get(ref.storage.dtype).numpy)
        raw = os.pread(self._fd, ref.storage.numel * dt.itemsize, self._storage_offset(ref.storage.key))
        whole = np.frombuffer(raw, dtype=dt)
        view = np.lib.stride_tricks.as_strided(whole[ref.offset:], ref.shape, tuple(s * dt.itemsize for s in ref.stride))
        return memoryview(np.ascontiguousarray(view).reshape(-1).view(np.uint8))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._zip.close()


# -- writing -------------------------------------------------------------------------------

def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def state_dict_pickle(entries: list[tuple[str, str, str, tuple[int, ...], int]]) -> bytes:
    """data.pkl for a dict name -> contiguous tensor; entries are (name, dtype, storage key, shape, storage numel)."""
    out = [b"\x80\x02}("]
    for name, dtype, key, shape, numel in entries:
        stride, step = [], 1
        for n in reversed(shape):
            stride.append(step)
            step *= n
        storage = _tuple([_str("storage"), b"ctorch\n" + dtypes.get(dtype).storage.encode() + b"\n", _str(key), _str("cpu"), _int(numel)]) + b"Q"
        args = _tuple([storage, _int(0), _tuple([_int(s) for s in shape]), _tuple([_int(s) for s in reversed(stride)]),
                       b"\x89", b"ccollections\nOrderedDict\n)R"])
        out.append(_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
    out.append(b"u.")
    return b"".join(out)


class TorchZipWriter:
    """Writes a torch.save zip one record at a time; storage records are 64-byte aligned."""

    def __init__(self, path: Path, archive: str):
        self.path = Path(path)
        self._f = open(self.path, "wb")
        self._zip = zipfile.ZipFile(self._f, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._prefix = archive + "/"

    def record(self, name: str, chunks, nbytes: int) -> None:
        """Add record ``name`` whose ``nbytes`` bytes come from the iterable ``chunks``."""
        zi = zipfile.ZipInfo(self._prefix + name, date_time=(1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_STORED
        zi.file_size = nbytes
        zip64 = nbytes > zipfile.ZIP64_LIMIT * 1.05 // 1
        head = 30 + len(zi.filename.encode()) + (20 if zip64 else 0)
        pad = -(self._f.tell() + head + 4) % _ALIGN
        zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad   # the padding field torch's writer uses
        with self._zip.open(zi, "w", force_zip64=zip64) as out:
            written = 0
            for chunk in chunks:
                out.write(chunk)
                written += len(memoryview(chunk).cast("B"))
        if written != nbytes:
            raise RuntimeError(f"{self.path}: record {name} got {written} bytes, expected {nbytes}")

    def close(self) -> None:
        self._zip.close()
        self._f.close()

