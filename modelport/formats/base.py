"""What every format adapter provides: a lazy tensor source, and a writer.

A :class:`TensorSource` knows names, shapes and dtypes without reading tensor
data, and reads one tensor at a time. Writers take any source, so a conversion
streams tensor by tensor and peak memory follows the largest tensor.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import dtypes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                 # canonical dtype name, see modelport.dtypes
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.get(self.dtype).itemsize


@dataclass(frozen=True)
class Span:
    """A tensor's bytes lying contiguous (C order, little-endian) in a file."""

    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class StorageView:
    """Where a tensor lies in a storage shared with other tensors of the same source."""

    key: str                   # identifies the storage within its source
    numel: int                 # elements in the whole storage
    offset: int                # element offset of the tensor's first element
    stride: tuple[int, ...]    # in elements


@dataclass(frozen=True)
class SourceFile:
    """One file that makes up a model, and what it is to the model."""

    path: Path
    role: str          # weights | index | config | side (tokenizer …, carried through) | external (ONNX external data)


ROLES = ("weights", "index", "config", "side", "external")


@dataclass(frozen=True)
class WriteResult:
    """What :meth:`Format.write` wrote: every file under the path it was given (that path itself for a
    file format), the weight files the tensors were split across when there is more than one, and what
    the caller should tell the user. ``model_parallel``: each shard holds a piece of every tensor (Meta's
    consolidated.NN.pth), not a share of the names."""

    files: tuple[Path, ...]
    shards: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()
    model_parallel: bool = False


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may be told. Every adapter reads the fields it knows and ignores the rest."""

    strip_prefix: str | None = None      # pt: prefix removed from every key ("module.")
    params_only: bool = False            # t7: keep only an nn model's parameters
    t7_long_size: int | None = None      # t7: force 4- or 8-byte longs
    t7_endian: str | None = None         # t7: force little | big
    allow_expanded: bool = False         # accept views far larger than their storages (see formats/_untrusted.py)


@dataclass(frozen=True)
class WriteOptions:
    """What a writer may be told. ``config`` is the model's config, resolved by the caller, in the
    spelling the format stores (hf: config.json; meta: params.json). Graph formats are not written
    through these: convert exports a runnable model with ``convert.export_options.ExportOptions``."""

    config: dict | None = None           # hf / meta: the config file to write with the weights
    shards: int | None = None            # meta: model-parallel shards to write
    shard_size: int | None = None        # hf: largest shard in bytes (default 5 GB)
    crc32: bool = True                   # pt: real zip CRC-32s (computed beside the copy; torch.load ignores them)
    t7_mode: str = "binary"              # t7: binary | ascii
    align: bool = True                   # pt / safetensors: large tensors keep their source offset mod 64 KiB (faster copies)


@dataclass
class Options:
    """Options of a conversion from the command line or the Python API: reading, layout, writing.

    Callers fill one; :meth:`reading` and :meth:`writing` give each role its own typed view, and
    nothing modelport does changes the object the caller passed.
    """

    strip_prefix: str | None = None      # pt: prefix removed from every key ("module.")
    config: Path | None = None           # hf / meta: config.json (or params.json) to write with the weights
    shards: int | None = None            # meta: model-parallel shards to write
    arch: str | None = None              # architecture id or package.module:factory
    layout: str | None = None            # target layout (llama-meta, gpt2-nanogpt …); default keeps the source's
    params_only: bool = False            # t7: keep only an nn model's parameters
    t7_mode: str = "binary"              # t7 writer: binary | ascii
    t7_long_size: int | None = None      # t7 reader: force 4- or 8-byte longs
    t7_endian: str | None = None         # t7 reader: force little | big
    crc32: bool = True                   # pt writer: real zip CRC-32s (computed beside the copy; torch.load ignores them)
    align: bool = True                   # pt / safetensors writers: large tensors keep their source offset mod 64 KiB
    allow_expanded: bool = False         # readers: accept views far larger than their storages (see formats/_untrusted.py)
    assume_config: bool = False          # bare weights: accept guessed config values (recorded in the output)

    def reading(self) -> ReadOptions:
        return ReadOptions(self.strip_prefix, self.params_only, self.t7_long_size, self.t7_endian, self.allow_expanded)

    def writing(self, config: dict | None = None, shard_size: int | None = None) -> WriteOptions:
        return WriteOptions(config, self.shards, shard_size, self.crc32, self.t7_mode or "binary", self.align)


def read_options(options: Options | ReadOptions | None) -> ReadOptions:
    """The reader's view of whatever options a caller passed."""
    if options is None:
        return ReadOptions()
    return options if isinstance(options, ReadOptions) else options.reading()


class TensorSource:
    """A lazily opened checkpoint. Subclasses implement ``names``, ``info`` and ``read_bytes``."""

    format: str = ""
    model_parallel: bool = False   # its weight files are pieces of every tensor, joined on read (Meta's shards)

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}     # free-form string metadata carried between formats
        self.config: dict | None = None        # config.json of the model, when the source has one
        # a config file the format holds in its own spelling instead of config.json: (its file name, its
        # content as read and checked), e.g. ("params.json", {...}) of a Meta checkpoint
        self.native_config: tuple[str, dict] | None = None
        self.side_files: dict[str, Path] = {}  # files carried through unchanged (tokenizer …)
        self.notes: list[str] = []             # facts for `inspect` (e.g. "first of 3 objects")

    # -- the three things every source knows ------------------------------------------
    def names(self) -> list[str]:
        raise NotImplementedError

    def info(self, name: str) -> TensorInfo:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | memoryview:
        """The tensor's elements, C-contiguous and little-endian."""
        raise NotImplementedError

    def files(self) -> list[SourceFile]:
        """The files that make up the model, weights first in the order they are read, then the index,
        config and carried side files (for the conversion manifest, ``view`` and the overlap check).
        A single-file source is its one file; a source held in memory has none."""
        return [SourceFile(self.path, "weights")] if self.path.is_file() else []

    # -- optional ---------------------------------------------------------------------
    def span(self, name: str) -> Span | None:
        """Where the tensor's bytes already lie contiguous in a file, for zero-copy writers."""
        return None

    def aliases(self) -> dict[str, str]:
        """Names that are the same tensor as another name (tied weights): alias -> kept name.

        Aliases are not in ``names()``; writers that can share storage write them as shared,
        others record them so a reader restores them.
        """
        return {}

    def storage_view(self, name: str) -> StorageView | None:
        """The shared storage a tensor is a view of, for writers that keep sharing (pt, t7)."""
        return None

    def read_storage_bytes(self, key: str) -> bytes | memoryview:
        """A whole storage's bytes (little-endian), for keys given by ``storage_view``."""
        raise NotImplementedError

    def storage_span(self, key: str) -> Span | None:
        """Where a whole storage's bytes lie contiguous in a file, for zero-copy writers."""
        return None

    def buffers(self) -> set[str]:
        """Names that hold module state rather than learnable parameters (running statistics, pooling
        indices, outputs of a Lua nn model), counted apart by ``inspect``; none for plain weight files."""
        return set()

    def tree(self) -> str | None:
        """A printable object tree for ``inspect`` (t7 objects, graphs), when the format has one."""
        return None

    def model_summary(self) -> str | None:
        """For a file that holds a runnable model (a Lua nn model …), the rebuilt module's tree."""
        return None

    def read(self, name: str):
        """One tensor as a torch.Tensor (imports torch)."""
        from ..runtime import need_torch

        torch = need_torch("reading a tensor as a torch.Tensor")

        info = self.info(self._canonical(name))
        data = self.read_bytes(info.name)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtypes.to_torch(info.dtype))
        buf = bytearray(data) if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly) else data
        return torch.frombuffer(buf, dtype=dtypes.to_torch(info.dtype)).reshape(info.shape)

    def infos(self) -> Iterator[TensorInfo]:
        for name in self.names():
            yield self.info(name)

    def state_dict(self) -> dict:
        """Every tensor, aliases included, as torch tensors (tied names share one tensor)."""
        out = {name: self.read(name) for name in self.names()}
        for alias, kept in self.aliases().items():
            out[alias] = out[kept]
        return out

    def _canonical(self, name: str) -> str:
        return self.aliases().get(name, name)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WrappedSource(TensorSource):
    """A source seen through another (a layout mapping, a dtype cast): everything passes through to
    ``inner``; subclasses change what they need.

    Metadata policy: a wrapper takes a copy of the inner source's ``metadata``, ``config``,
    ``native_config``, ``side_files`` and ``notes`` when it is made. What it adds (a note, a config it
    was given) is its own; the source it wraps is never changed through it, and nothing the inner
    source learns later shows through. ``inner`` is kept so the chain can be walked (the manifest reads each link's
    ``applied``)."""

    def __init__(self, inner: TensorSource):
        super().__init__(inner.path)
        self.inner = inner
        self.format = inner.format
        self.metadata = dict(inner.metadata)
        self.config = dict(inner.config) if inner.config is not None else None
        self.native_config = inner.native_config
        self.side_files = dict(inner.side_files)
        self.notes = list(inner.notes)

    def names(self) -> list[str]:
        return self.inner.names()

    def info(self, name: str) -> TensorInfo:
        return self.inner.info(name)

    def read_bytes(self, name: str):
        return self.inner.read_bytes(name)

    def files(self) -> list[SourceFile]:
        return self.inner.files()

    def span(self, name: str) -> Span | None:
        return self.inner.span(name)

    def aliases(self) -> dict[str, str]:
        return self.inner.aliases()

    def storage_view(self, name: str) -> StorageView | None:
        return self.inner.storage_view(name)

    def read_storage_bytes(self, key: str):
        return self.inner.read_storage_bytes(key)

    def storage_span(self, key: str) -> Span | None:
        return self.inner.storage_span(key)

    def tree(self) -> str | None:
        return self.inner.tree()

    def close(self) -> None:
        self.inner.close()


class Format:
    """One format: its id, how to recognise it, and how to read and write it."""

    id: str = ""
    description: str = ""
    suffixes: tuple[str, ...] = ()
    directory: bool = False        # the format is a directory, not a file
    can_read: bool = True
    can_write: bool = True
    runnable: bool = False         # holds a model that runs, not only weights
    graph: bool = False            # holds a program (torchscript, onnx): written by exporting a runnable model
    requires: tuple[tuple[str, str], ...] = ()   # (module, pip package) needed to use it
    config_file: str | None = None  # the model config file it stores, given in WriteOptions.config

    def missing(self) -> list[str]:
        """Packages this format needs that are not installed."""
        import importlib.util

        return [pkg for mod, pkg in self.requires if importlib.util.find_spec(mod) is None]

    def sniff(self, path: Path) -> bool:
        """True when the content at ``path`` is of this format (not only its suffix)."""
        return False

    def open(self, path: Path, options: ReadOptions) -> TensorSource:
        raise NotImplementedError

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        """Write ``source`` to ``dst``, a fresh path the caller renames into place, and say what was
        written. ``source`` is already in the layout the format holds and is not changed;
        ``progress(nbytes)`` is called as bytes are written."""
        raise NotImplementedError


def is_contiguous(shape, stride) -> bool:
    """True when a view of ``shape`` with element ``stride`` is C-contiguous (empty views are)."""
    if 0 in shape:
        return True
    expect = 1
    for s, st in zip(reversed(shape), reversed(stride)):
        if s != 1 and st != expect:
            return False
        expect *= s
    return True


def read_head(path: Path, n: int = 64, strict: bool = False) -> bytes:
    """The first ``n`` bytes of a file (fewer when it is shorter). A file that cannot be read (a
    directory, no permission, gone) gives b"" for sniffers, which only ask "is it mine?", and
    raises the OSError when ``strict``, so that an unreadable file is not called empty. Anything but
    a regular file gives b"" (a FIFO is never opened: it would block)."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        if strict:
            raise
        return b""


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def release_map(m):
    """Close a file map unless a caller still holds a view of it (then it goes with the last view); None."""
    if m is not None:
        try:
            m.close()
        except BufferError:
            pass
    return None
