"""The weights of a built graph: hub names resolved to the checkpoint's tensors, and their bytes
streamed from the source into the external-data file one tensor at a time.

A decoder asks for tensors by their hub (Hugging Face) name; the plan finds the checkpoint's own
spelling (the base-model prefix may be missing, transformers 5 may say ``lm_head`` for NeoX's
``embed_out``, a tied output embedding is the input embedding), checks the shape against the family
record, and names the initializer after the checkpoint's tensor, so a tied weight is stored once.
Bytes go straight from the file (a kernel copy when the dtype is kept and the bytes lie in a file),
or are cast in chunks; no tensor is transposed: projections use ``Gemm`` on the stored orientation.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ... import dtypes
from ...errors import LayoutError, UnsupportedError
from ...formats._stream import ALIGN_MIN, ALIGN_MOD, copy_span

_CHUNK_ELEMS = 8 << 20            # elements cast at once (32 MiB of float32)
# onnx TensorProto data types by canonical dtype name
ONNX_TYPE = {"float32": 1, "float16": 10, "bfloat16": 16, "float64": 11, "int64": 7, "int32": 6, "int8": 3,
             "uint8": 2, "bool": 9}
_NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
_FINITE_MAX = {"float16": 65504.0}


class WeightPlan:
    """Tensors a graph uses, in order of first use, with the dtype each is stored in."""

    def __init__(self, source, family, dims: dict, dtype: str, tied: bool):
        self.source, self.family, self.dims, self.dtype, self.tied = source, family, dims, dtype, tied
        self.names = set(source.names())
        self.aliases = source.aliases()
        self.used: dict[str, str] = {}               # source tensor name -> initializer name (the same)
        self.order: list[str] = []
        self.skipped: set[str] = set()               # source tensors the tied output makes redundant
        self._shapes = {re.compile("^" + re.escape(k).replace(re.escape("{bid}"), r"\d+") + "$"): v
                        for k, v in family.hub_shapes.items()}

    def _find(self, hub: str) -> str | None:
        prefix = self.family.prefix
        candidates = [hub, hub.removeprefix(prefix)] + [a for a, ours in self.family.renames.items() if ours == hub]
        for name in candidates:
            if name in self.names:
                return name
            if name in self.aliases:
                return self.aliases[name]
        return None

    def has(self, hub: str) -> bool:
        return self._find(hub) is not None

    def __call__(self, hub: str) -> str:
        """The initializer name for hub tensor ``hub`` (registering its use)."""
        out_name, in_name = self.family.tied
        if hub == out_name and self.tied:
            own = self._find(out_name)
            if own is not None and own != self._find(in_name):
                self.skipped.add(own)
            hub = in_name
        name = self._find(hub)
        if name is None:
            raise LayoutError(f"{self.source.path}: no tensor {hub!r} (or {hub.removeprefix(self.family.prefix)!r}), "
                              f"which the {self.family.id} graph needs; is the config right for these weights?")
        if name not in self.used:
            self._check_shape(hub, name)
            self.used[name] = name
            self.order.append(name)
        return name

    def _check_shape(self, hub: str, name: str) -> None:
        shape = tuple(self.source.info(name).shape)
        for pattern, dims in self._shapes.items():
            if pattern.match(hub):
                want = tuple(self.dims.get(d) for d in dims)
                if None not in want and want != shape:
                    raise LayoutError(f"{self.source.path}: tensor {name!r} has shape {list(shape)}; the config "
                                      f"makes it {list(want)} ({', '.join(dims)})")
                return

    def check_all_used(self) -> None:
        """Every tensor of the checkpoint lands in the graph, except buffers the model recomputes."""
        derived = [re.compile(p) for p in self.family.derived_buffers]
        left = sorted(n for n in self.names if n not in self.used and n not in self.skipped
                      and not any(p.search(n) for p in derived))
        if left:
            more = f" and {len(left) - 5} more" if len(left) > 5 else ""
            raise LayoutError(f"{self.source.path}: tensors the {self.family.id} graph does not use: "
                              f"{', '.join(left[:5])}{more}; is the config right for these weights?")

    def stored_dtype(self, name: str) -> str:
        src = self.source.info(name).dtype
        return self.dtype if src in dtypes.FLOATING else src

    def nbytes(self, name: str) -> int:
        return self.source.info(name).numel * dtypes.get(self.stored_dtype(name)).itemsize

    def tensor_protos(self, location: str | None = None, offsets: dict[str, int] | None = None) -> list:
        """Initializers pointing into the external-data file ``location`` at ``offsets``; without a location,
        their headers only (name, dims, type), which :meth:`write_inline` completes with the bytes."""
        from onnx import TensorProto

        out = []
        for name in self.order:
            info = self.source.info(name)
            t = TensorProto()
            t.name = name
            t.dims.extend(info.shape)
            t.data_type = ONNX_TYPE[self.stored_dtype(name)]
            if location is not None:
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", location), ("offset", str(offsets[name])), ("length", str(self.nbytes(name)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
            out.append(t)
        return out

    def packed_offsets(self) -> tuple[dict[str, int], int]:
        """Each tensor's offset when they lie back to back, and the total bytes."""
        offsets, pos = {}, 0
        for name in self.order:
            offsets[name] = pos
            pos += self.nbytes(name)
        return offsets, pos

    def write(self, path, progress=None) -> dict[str, int]:
        """Stream every used tensor into ``path``; returns each tensor's offset."""
        offsets = {}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pos = 0
            for name in self.order:
                span = self._span(name)
                nbytes = self.nbytes(name)
                if nbytes >= ALIGN_MIN:
                    # large tensors start at the source's offset modulo 64 KiB (fast kernel copies) or on 64 KiB
                    want = span.offset % ALIGN_MOD if span is not None else 0
                    pos += (want - pos) % ALIGN_MOD
                offsets[name] = pos
                os.lseek(fd, pos, os.SEEK_SET)
                self._write_tensor(fd, name, span)
                pos += nbytes
                if progress:
                    progress(nbytes)
            os.ftruncate(fd, pos)
            os.fsync(fd)
        finally:
            os.close(fd)
        return offsets

    def inline_size(self, head: int, graph: bytes, headers: list) -> int:
        """Bytes of the file :meth:`write_inline` writes, ``head`` being the length of the rest of the model
        (to compare with protobuf's 2 GiB limit before anything is written)."""
        return head + _field_size(len(graph) + sum(_field_size(_tensor_size(h, self.nbytes(h.name))) for h in headers))

    def write_inline(self, path, head: bytes, graph: bytes, headers: list, rest) -> int:
        """Write one ModelProto file with every tensor's bytes inside it, streamed as into external data.

        ``head`` is the serialised model fields before the graph (ir_version first), ``graph`` the
        serialised graph without initializers, ``headers`` the initializers without data
        (:meth:`tensor_protos`), ``rest()`` the serialised fields after the graph (called last: the
        metadata may wait for the source's hash). The graph's initializers (GraphProto field 5, their bytes
        in ``raw_data``, field 9) follow its other fields, which protobuf parsers take in any order: only
        lengths are computed ahead, no tensor is held whole. Returns the bytes written."""
        from ...formats._onnxproto import varint

        entries = [(h.SerializeToString(), self.nbytes(h.name)) for h in headers]
        body = len(graph) + sum(_field_size(len(raw) + _field_size(n)) for raw, n in entries)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, head + _GRAPH_TAG + varint(body) + graph)
            for (raw, n), name in zip(entries, self.order):
                _write_all(fd, _INIT_TAG + varint(len(raw) + _field_size(n)) + raw + _RAW_TAG + varint(n))
                self._write_tensor(fd, name, self._span(name))
            _write_all(fd, rest())
            size = os.lseek(fd, 0, os.SEEK_CUR)
            os.fsync(fd)
        finally:
            os.close(fd)
        return size

    def _span(self, name: str):
        """Where the tensor's bytes lie in a file, when they are written as stored (a kernel copy)."""
        info = self.source.info(name)
        return self.source.span(name) if self.stored_dtype(name) == info.dtype else None

    def _write_tensor(self, fd: int, name: str, span) -> None:
        """The tensor's bytes at ``fd``'s position: copied, read whole when kept, or cast in chunks."""
        info = self.source.info(name)
        if span is not None:
            copy_span(span, fd)
        elif self.stored_dtype(name) == info.dtype:
            _write_all(fd, self.source.read_bytes(name))
        else:
            self._write_cast(fd, name, info)

    def _write_cast(self, fd: int, name: str, info) -> None:
        data = memoryview(self.source.read_bytes(name)).cast("B")
        if info.dtype != "bfloat16" and info.dtype not in _NUMPY:
            raise UnsupportedError(f"{self.source.path}: tensor {name!r} is {info.dtype}, which an ONNX graph "
                                   "cannot be built from")
        flat = np.frombuffer(data, dtype=np.uint16 if info.dtype == "bfloat16" else _NUMPY[info.dtype])
        target = _NUMPY[self.dtype]
        limit = _FINITE_MAX.get(self.dtype)
        for start in range(0, flat.size, _CHUNK_ELEMS):
            part = _float32(flat[start:start + _CHUNK_ELEMS], info.dtype)
            if limit is not None and part.size:
                big = np.abs(part) > limit
                if big.any() and np.isfinite(part[big]).any():
                    raise UnsupportedError(f"{self.source.path}: tensor {name!r} has values beyond {self.dtype}'s "
                                           f"range (±{limit:g}); export without --dtype {self.dtype}")
            _write_all(fd, part.astype(target).tobytes())


# protobuf keys (field number << 3 | 2, length-delimited): ModelProto.graph, GraphProto.initializer,
# TensorProto.raw_data
_GRAPH_TAG, _INIT_TAG, _RAW_TAG = bytes([7 << 3 | 2]), bytes([5 << 3 | 2]), bytes([9 << 3 | 2])


def _varint_size(n: int) -> int:
    return max(1, -(-n.bit_length() // 7))


def _field_size(length: int) -> int:
    """Bytes of a one-byte-keyed length-delimited field whose payload is ``length`` bytes."""
    return 1 + _varint_size(length) + length


def _tensor_size(header, nbytes: int) -> int:
    return header.ByteSize() + _field_size(nbytes)


def _float32(part: np.ndarray, dtype: str) -> np.ndarray:
    """One chunk widened to float32 (bfloat16 is the high half of a float32: exact)."""
    if dtype == "bfloat16":
        return (part.astype(np.uint32) << 16).view(np.float32)
    return part.astype(np.float32)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]
