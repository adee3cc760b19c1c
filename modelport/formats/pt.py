"""pt: ``torch.save`` checkpoints, read and written without importing torch.

Reading. Two containers: the zip of torch >= 1.6 (``<prefix>/data.pkl`` plus one
stored member ``<prefix>/data/<key>`` per storage) and the legacy stream of
``_use_new_zipfile_serialization=False`` (magic number, protocol, system info and
object pickles, the storage key list, then each storage as an 8-byte element count
and its raw bytes). The object pickle goes through an allow-listing unpickler
(:mod:`._pickle`): a global other than what a state dict needs is refused with
:class:`UnsafeContentError` and nothing from the file is executed. Tensors are lazy
views (storage, element offset, shape, stride) whose bounds are checked on open;
contiguous little-endian views have a :class:`Span` so a writer can copy them in the
kernel, the others are gathered with numpy.

The common wrappers ``{"state_dict": …}``, ``{"model_state_dict": …}``,
``{"model": …}`` and ``{"module": …}`` are unwrapped; nested dicts and lists of
tensors get dotted names; non-tensor leaves (epoch, strings) go into ``metadata`` as
JSON strings, and tensors outside the unwrapped part are listed in ``notes``.

Writing. A zip laid out as torch 2.13's ``torch.save`` lays it out (member names,
``.format_version``, ``.storage_alignment``, ``byteorder``, ``version``,
``.data/serialization_id``, data aligned to 64 bytes), with a hand-written protocol-2
``data.pkl``; storages of 4 MiB and more are instead placed at their source offset
modulo 64 KiB, for faster kernel copies (``Options.align``, see :mod:`._torchzip`).
Tensors that share a storage in the source (``storage_view``) or are tied
(``aliases``) stay views of one storage, written once; tied names come after the
others. Storage bytes move with ``os.copy_file_range`` from the source's spans. The
source's string ``metadata`` is not written: the file is a plain state dict that
``model.load_state_dict`` takes as it is.

CRC-32: every member gets its real CRC, so ``unzip -t`` and Python's :mod:`zipfile`
accept the file. Computing it reads every byte back in user space; a second thread does
that while the next storage is copied in the kernel, so it costs little wall time.
``WriteOptions.crc32=False`` (``--no-crc32``) writes 0 instead, as
``torch.serialization.set_crc32_options(False)`` makes torch.save do: ``torch.load``
does not check CRCs (tested with ``weights_only=True``, with and without ``mmap=True``).
"""

from __future__ import annotations

import io
import json
import math
import mmap
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

from .. import dtypes
from ..errors import FormatError, UnsupportedError
from ._registry import register
from ._pickle import BadCheckpoint, BoundedReader, CheckpointUnpickler, StorageRef, TensorRef, check_opcodes
from ._torchzip import ZipReader, write_pt
from ._untrusted import MAX_RANK, check_expansion, open_regular, still_whole
from .base import Format, ReadOptions, Span, StorageView, TensorInfo, TensorSource, WriteOptions, WriteResult, file_size, is_contiguous, read_head, release_map

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_BYTES = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")   # LONG1 opcode, 10 bytes
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                  AttributeError, OverflowError, UnicodeDecodeError, RecursionError, MemoryError, struct.error)


class _Storage:
    """Where one storage's bytes are: ``offset`` in the file, or ``data`` when compressed."""

    __slots__ = ("key", "dtype", "numel", "offset", "data", "problem")

    def __init__(self, key: str, dtype: str, numel: int, offset: int | None, data: bytes | None = None, problem: str | None = None):
        self.key, self.dtype, self.numel, self.offset, self.data = key, dtype, numel, offset, data
        self.problem = problem     # why the bytes cannot be read (missing member, truncated file)


class PtSource(TensorSource):
    format = "pt"
    unpickler = CheckpointUnpickler      # the TorchScript reader widens it with its inert script objects

    def __init__(self, path: Path, options: ReadOptions):
        super().__init__(path)
        self._size = file_size(path)
        self._allow_expanded = options.allow_expanded
        self._big = False
        self._stores: dict[str, _Storage] = {}
        self._mmap: mmap.mmap | None = None
        head = read_head(path, 16)
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            root = self._open_zip()
        elif head.startswith(b"\x80"):
            root = self._open_legacy()
        elif not head:
            raise FormatError(f"{path}: an empty file, not a PyTorch checkpoint")
        else:
            raise FormatError(f"{path}: neither a zip archive nor a pickle: not a PyTorch checkpoint")
        self._build(root, options.strip_prefix)

    # -- containers ------------------------------------------------------------------------
    def _unpickle(self, data: bytes | BoundedReader, what: str, storages=None, whole=None):
        """One pickle from ``data`` (bytes, or a reader positioned in ``whole``, the file's bytes)."""
        stream = io.BytesIO(data) if isinstance(data, bytes) else data
        try:
            check_opcodes(data if isinstance(data, bytes) else whole, stream.tell(), self.path)
            return self.unpickler(stream, self.path, storages).load()
        except BadCheckpoint as exc:
            raise FormatError(f"{self.path}: {what} is not a plain state dict: {exc}") from exc
        except _PICKLE_ERRORS as exc:
            detail = " ".join(str(exc).split())[:200]
            raise FormatError(f"{self.path}: corrupt {what} ({type(exc).__name__}: {detail}); the file is truncated or damaged") from exc

    def _open_zip(self):
        self._zip = zr = ZipReader(self.path, self._size)
        pkls = self._data_pickles(zr)
        if not pkls:
            shown = ", ".join(list(zr.members)[:5]) or "nothing"
            raise FormatError(f"{self.path}: a zip archive without <name>/data.pkl (it holds {shown}): not a PyTorch checkpoint")
        prefix = pkls[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in zr.members:
            value = zr.read(order, limit=16).decode("ascii", "replace").strip()
            if value not in ("little", "big"):
                raise FormatError(f"{self.path}: unknown byteorder {value[:16]!r} in {order}")
            self._big = value == "big"
        storages: dict[str, StorageRef] = {}
        root = self._unpickle(zr.read(pkls[0], allow_expanded=self._allow_expanded), "data.pkl", storages)
        for key, ref in storages.items():
            member = f"{prefix}data/{key}"
            m = zr.members.get(member)
            if m is None:
                self._stores[key] = _Storage(key, ref.dtype, 0, None, problem=f"has no member {member}; the archive is incomplete")
                continue
            itemsize = dtypes.get(ref.dtype).itemsize
            if m.compressed:
                data = zr.read(member, allow_expanded=self._allow_expanded)
                self._stores[key] = _Storage(key, ref.dtype, len(data) // itemsize, None, data)
            else:
                self._stores[key] = _Storage(key, ref.dtype, m.size // itemsize, zr.data_offset(member))
        return root

    def _data_pickles(self, zr: ZipReader) -> list[str]:
        return [n for n in zr.members if n.endswith("/data.pkl") and n.count("/") == 1]

    def _open_legacy(self):
        with open_regular(self.path) as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as whole:
            f = BoundedReader(raw, self._size)
            magic = self._unpickle(f, "legacy header", whole=whole)
            if magic != LEGACY_MAGIC:
                raise FormatError(f"{self.path}: a Python pickle without torch's magic number: not a torch.save checkpoint")
            version = self._unpickle(f, "legacy header", whole=whole)
            if version != 1001:
                raise UnsupportedError(f"{self.path}: legacy torch checkpoint protocol {version!r}, only 1001 is supported; re-save it with a current torch")
            info = self._unpickle(f, "legacy header", whole=whole)
            if isinstance(info, Mapping) and info.get("little_endian", True) is False:
                self._big = True
            storages: dict[str, StorageRef] = {}
            root = self._unpickle(f, "checkpoint pickle", storages, whole=whole)
            keys = self._unpickle(f, "storage list", whole=whole)
            if not isinstance(keys, list):
                raise FormatError(f"{self.path}: corrupt legacy checkpoint: the storage list is a {type(keys).__name__}")
            pos = f.tell()
        order = ">" if self._big else "<"
        problem = None
        with open_regular(self.path) as f:
            for key in keys:
                ref = storages.get(str(key))
                if ref is None:
                    raise FormatError(f"{self.path}: corrupt legacy checkpoint: storage {key!r} is listed but never used")
                f.seek(pos)
                raw = f.read(8)
                count = struct.unpack(order + "q", raw)[0] if len(raw) == 8 else -1
                nbytes = count * dtypes.get(ref.dtype).itemsize
                if count < 0 or pos + 8 + nbytes > self._size:
                    problem = f"ends past the end of the file ({self._size} bytes); the file is truncated"
                    break
                self._stores[ref.key] = _Storage(ref.key, ref.dtype, count, pos + 8)
                pos += 8 + nbytes
        for key, ref in storages.items():
            if key not in self._stores:
                self._stores[key] = _Storage(key, ref.dtype, 0, None, problem=problem or "is missing from the legacy checkpoint; the file is incomplete")
        return root

    # -- the object tree ---------------------------------------------------------------------
    def _build(self, root, strip_prefix: str | None) -> None:
        if isinstance(root, TensorRef):
            root = {"tensor": root}
            self.notes.append("the file holds a single tensor, named 'tensor' here")
        if not isinstance(root, Mapping):
            raise FormatError(f"{self.path}: holds a {type(root).__name__}, not a state dict (a dict of tensors)")
        try:
            self._flatten_root(root, strip_prefix)
        except BadCheckpoint as exc:
            raise FormatError(f"{self.path}: {exc}") from exc
        except RecursionError as exc:   # a structure nested absurdly deep, or one that contains itself
            raise FormatError(f"{self.path}: the checkpoint's object tree is nested too deeply or contains itself") from exc

    def _flatten_root(self, root, strip_prefix: str | None) -> None:
        tensors: dict[str, TensorRef] = {}
        if not any(isinstance(v, TensorRef) for v in root.values()):
            for key in WRAPPER_KEYS:
                inner = root.get(key)
                if isinstance(inner, Mapping) and _has_tensor(inner):
                    self.notes.append(f"unwrapped the state dict under {key!r}")
                    outside: dict[str, TensorRef] = {}
                    _flatten({k: v for k, v in root.items() if k != key}, "", outside, self.metadata)
                    if outside:
                        self.notes.append(f"ignored {len(outside)} tensors outside {key!r} (e.g. {next(iter(outside))})")
                    root = inner
                    break
        _flatten(root, "", tensors, self.metadata)
        self._index(tensors, strip_prefix)

    def _index(self, tensors: dict[str, TensorRef], strip_prefix: str | None) -> None:
        """Adopt ``{name: view}``: names checked, prefix stripped, ties found, every view checked."""
        for name in tensors:
            if not name.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in name):
                raise FormatError(f"{self.path}: a tensor name is not valid Unicode (a lone surrogate): {name!r}")
        if strip_prefix:
            stripped: dict[str, TensorRef] = {}
            for name, t in tensors.items():
                new = name[len(strip_prefix):] if name.startswith(strip_prefix) else name
                if new in stripped:
                    raise FormatError(f"{self.path}: stripping {strip_prefix!r} makes {name!r} collide with another tensor named {new!r}")
                stripped[new] = t
            tensors = stripped
        self._tensors: dict[str, TensorRef] = {}
        self._aliases: dict[str, str] = {}
        seen: dict[tuple, str] = {}
        logical = 0
        for name, t in tensors.items():
            self._check(name, t)
            ident = (t.storage.key, t.offset, t.shape, t.stride)
            if ident in seen:
                self._aliases[name] = seen[ident]
            else:
                seen[ident] = name
                self._tensors[name] = t
                logical += math.prod(t.shape) * dtypes.get(t.dtype).itemsize
        used = {t.storage.key for t in self._tensors.values()}
        stored = sum(self._stores[k].numel * dtypes.get(self._stores[k].dtype).itemsize for k in used)
        check_expansion(self.path, logical, stored, self._allow_expanded)

    def _check(self, name: str, t: TensorRef) -> None:
        """Every field of a view, validated where it is used: the view must lie inside its storage."""
        st = self._stores[t.storage.key]
        if st.problem:
            raise FormatError(f"{self.path}: tensor {name!r}: its storage {st.key!r} {st.problem}")
        if type(t) is not TensorRef or not isinstance(t.shape, tuple) or not isinstance(t.stride, tuple) \
                or len(t.shape) != len(t.stride) or len(t.shape) > MAX_RANK \
                or not all(type(v) is int and v >= 0 for v in (t.offset, *t.shape, *t.stride)):
            raise FormatError(f"{self.path}: tensor {name!r}: a malformed view (shape, stride and offset must be "
                              f"non-negative integers of equal rank, at most {MAX_RANK}); the file is corrupt")
        numel = math.prod(t.shape)
        if numel == 0:
            return
        last = t.offset + sum((s - 1) * d for s, d in zip(t.shape, t.stride))
        if last >= st.numel:
            raise FormatError(
                f"{self.path}: tensor {name!r} (shape {list(t.shape)}, stride {list(t.stride)}, offset {t.offset}) reaches element {last} "
                f"of storage {st.key!r}, which has {st.numel} {st.dtype} elements; the file is truncated or corrupt"
            )

    # -- the TensorSource interface -------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        t = self._tensors[name]
        return TensorInfo(name, t.dtype, t.shape)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def _buffer(self, st: _Storage):
        if st.data is not None:
            return memoryview(st.data), 0
        still_whole(self.path, self._size)
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._mmap), st.offset

    def span(self, name: str) -> Span | None:
        t = self._tensors[name]
        st = self._stores[t.storage.key]
        if self._big or st.offset is None or not is_contiguous(t.shape, t.stride):
            return None
        itemsize = dtypes.get(t.dtype).itemsize
        return Span(self.path, st.offset + t.offset * itemsize, self.info(name).nbytes)

    def read_bytes(self, name: str) -> bytes | memoryview:
        t = self._tensors[name]
        st = self._stores[t.storage.key]
        info = self.info(name)
        if info.nbytes == 0:
            return b""
        dt = dtypes.get(t.dtype)
        buf, base = self._buffer(st)
        if is_contiguous(t.shape, t.stride):
            start = base + t.offset * dt.itemsize
            view = buf[start:start + info.nbytes]
            return _swapped(view, dt) if self._big else view
        import numpy as np
        from numpy.lib.stride_tricks import as_strided

        npdt = np.dtype(dt.numpy).newbyteorder(">" if self._big else "<") if dt.itemsize > 1 else np.dtype(dt.numpy)
        flat = np.frombuffer(buf, dtype=npdt, count=st.numel, offset=base)
        strides = tuple(0 if n == 1 else s * dt.itemsize for n, s in zip(t.shape, t.stride))   # size-1: never stepped along
        view = as_strided(flat[t.offset:], shape=t.shape, strides=strides, writeable=False)
        return memoryview(np.ascontiguousarray(view, dtype=npdt.newbyteorder("<") if dt.itemsize > 1 else npdt)).cast("B")

    def storage_view(self, name: str) -> StorageView:
        t = self._tensors[name]
        return StorageView(t.storage.key, self._stores[t.storage.key].numel, t.offset, t.stride)

    def read_storage_bytes(self, key: str) -> bytes | memoryview:
        st = self._stores[key]
        dt = dtypes.get(st.dtype)
        buf, base = self._buffer(st)
        view = buf[base:base + st.numel * dt.itemsize]
        return _swapped(view, dt) if self._big else view

    def storage_span(self, key: str) -> Span | None:
        st = self._stores[key]
        if self._big or st.offset is None:
            return None
        return Span(self.path, st.offset, st.numel * dtypes.get(st.dtype).itemsize)

    def close(self) -> None:
        self._mmap = release_map(self._mmap)


def _swapped(view, dt) -> memoryview:
    if dt.itemsize == 1:
        return view
    import numpy as np

    return memoryview(np.frombuffer(view, dtype=np.dtype(dt.numpy).newbyteorder(">")).astype(np.dtype(dt.numpy))).cast("B")


_MAX_NODES = 2_000_000        # objects visited while naming tensors (a pickle can share one list 2**40 ways)
_MAX_METADATA = 100_000       # objects in one metadata value before it is summarised


def _has_tensor(obj, cache: dict | None = None) -> bool:
    """True when a tensor is reachable; shared sub-objects are looked at once. (Unpickled mappings
    are dicts: the unpickler builds no other kind, and isinstance on dict is far cheaper than Mapping.)"""
    cache = {} if cache is None else cache
    stack = [obj]
    while stack:
        o = stack.pop()
        t = type(o)
        if t is TensorRef:
            return True
        if id(o) in cache or not (t is list or t is tuple or isinstance(o, dict)):
            continue
        cache[id(o)] = o
        if len(cache) > _MAX_NODES:
            raise BadCheckpoint(f"the object tree has more than {_MAX_NODES:,} containers")
        stack.extend(o.values() if isinstance(o, dict) else o)
    return False


def _size_at_most(obj, limit: int) -> bool:
    """True when ``obj`` has at most ``limit`` objects counted as JSON would write them (shared ones again)."""
    stack, n = [obj], 0
    while stack:
        o = stack.pop()
        n += 1
        if n > limit:
            return False
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
    return True


def _key(k) -> str:
    if isinstance(k, (str, int, float, bool)) or k is None:
        return str(k)
    import reprlib

    return reprlib.repr(k)


def _flatten(obj, prefix: str, tensors: dict, metadata: dict, budget: list | None = None) -> None:
    budget = [_MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise BadCheckpoint(f"the object tree has more than {_MAX_NODES:,} entries (shared many times over?)")
    if isinstance(obj, TensorRef):
        if prefix in tensors:
            raise BadCheckpoint(f"two tensors are both named {prefix!r} once nested keys are joined with '.'")
        tensors[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{_key(k)}" if prefix else _key(k), tensors, metadata, budget)
    elif isinstance(obj, (list, tuple)) and _has_tensor(obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors, metadata, budget)
    elif not _size_at_most(obj, _MAX_METADATA):
        metadata[prefix] = json.dumps(f"<a {type(obj).__name__} of more than {_MAX_METADATA:,} objects, not shown>")
    else:
        import reprlib

        try:
            metadata[prefix] = json.dumps(obj, default=reprlib.repr)
        except (TypeError, ValueError):   # keys JSON cannot hold (tuples), circular references
            metadata[prefix] = json.dumps(reprlib.repr(obj))
        except RecursionError:            # nested deeper than JSON can be written
            metadata[prefix] = json.dumps(f"<a {type(obj).__name__} nested too deeply to show, not shown>")


class Pt(Format):
    id = "pt"
    description = "torch.save checkpoint (zip or legacy), read without running pickled code"
    suffixes = (".pt", ".pth", ".bin", ".ckpt")

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        head = read_head(path, 16)
        if head[:1] == b"\x80" and _LEGACY_MAGIC_BYTES in read_head(path, 32):
            return True   # legacy stream: the first pickle is torch's magic number (protocol 2, or framed 4+)
        if not head.startswith(b"PK\x03\x04"):
            return False
        head = read_head(path, 30 + 256)
        (name_len,) = struct.unpack("<H", head[26:28]) if len(head) >= 30 else (0,)
        if head[30:30 + name_len].endswith(b"/data.pkl"):
            return True   # torch writes data.pkl first: recognised even when the archive is truncated
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in zf.namelist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError, struct.error):
            return False   # an archive zipfile cannot list (an unknown version, a corrupt directory): not ours

    def open(self, path: Path, options: ReadOptions) -> PtSource:
        return PtSource(path, options)

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        write_pt(source, dst, crc32=options.crc32, progress=progress, align=options.align)
        return WriteResult((dst,))


register(Pt())
