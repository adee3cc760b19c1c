"""onnx: ONNX model files; initializers read as tensors, graphs run in onnxruntime.

Reading. The model is parsed without its weights' bytes: the file is walked at byte level and re-encoded
without the ``raw_data`` of its graph's initializers (:func:`._onnxproto.skeleton`), which are read from
their place in the file when asked for, and external data is not loaded; so only the graph is in memory,
however large the file. Every tensor that keeps its bytes in an external file is checked before
anything is read: the location must be a relative path that stays inside the model's directory
(symlinks resolved), and ``offset + length`` must lie within that file; otherwise the file is refused.
Initializers become tensors under their names (modelport's exporter keeps the source's parameter
names; ``metadata_props`` ``modelport.aliases`` lists tied names stored once, restored as aliases);
the model's ``metadata_props`` are carried as metadata.

Writing goes through the exporter (``modelport convert SRC out.onnx``), which exports a runnable model.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from ..errors import FormatError, UnsupportedError, one_line
from . import graphmeta
from ._onnxproto import skeleton
from ._registry import register
from .base import Format, Options, SourceFile, Span, TensorInfo, TensorSource, WriteResult, read_head

# onnx.TensorProto.DataType -> canonical dtype name
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 14: "complex64", 15: "complex128", 16: "bfloat16"}
ALIASES_KEY = "modelport.aliases"
# an edited graph run in onnxruntime reads initializers of at least this many bytes from the model file itself
_SESSION_INLINE_BELOW = 4096
# protobuf tags that may follow ModelProto's ir_version (field 1): fields 2-8, 14, 20, 21, 25
_MODEL_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72, 0xa2, 0xaa, 0xca}


def _external_entries(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def check_external_data(path: Path, model) -> None:
    """Refuse external data that lies outside the model's directory or past the end of its file."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = path.resolve().parent
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        entries = _external_entries(t)
        location = entries.get("location", "")
        where = f"{path}: tensor {t.name!r} keeps its data in {location!r}"
        if not location or os.path.isabs(location) or "\0" in location:
            raise FormatError(f"{where}: not a relative path beside the model; refused")
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise FormatError(f"{where}, outside the model's directory {base}; refused (move the data beside the model)")
        if not target.is_file():
            raise FormatError(f"{where}, which does not exist; copy the data file beside the model")
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise FormatError(f"{where} with a non-numeric offset or length; the file is corrupt") from None
        size = target.stat().st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(f"{where} at bytes {offset}..{offset + length}, past the end of that "
                              f"{size}-byte file; the data file is truncated or does not belong to this model")


def _parse(path: Path):
    """The ModelProto without its graph's initializers' ``raw_data``, checked, and the left-out spans
    ``(offset, length)`` per initializer (None for one without)."""
    import onnx

    raw, spans = skeleton(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors have no common base
        raise FormatError(f"{path}: not a readable ONNX model ({one_line(exc)})") from exc
    del raw
    if model.ir_version <= 0 or not model.HasField("graph"):       # what an empty or cut file parses as
        raise FormatError(f"{path}: not an ONNX model (no IR version or no graph); the file is empty or truncated")
    if len(spans) != len(model.graph.initializer):
        raise FormatError(f"{path}: the graph's initializers do not parse as they are laid out; the file is corrupt")
    _check_text(path, model)
    check_external_data(path, model)
    return model, spans


def load_skeleton(path: Path):
    """The ModelProto without its weights' bytes (the graph's initializers have no ``raw_data``, external data
    is not loaded), its external references checked, and where each left-out ``raw_data`` lies in the file:
    ``{initializer name: (offset, length)}`` (for a repeated name, the last one, as the tensors are read)."""
    model, spans = _parse(path)
    inline = {}
    for t, span in zip(model.graph.initializer, spans):
        inline[t.name] = span
    return model, {name: span for name, span in inline.items() if span is not None}


def load_proto(path: Path):
    """The ModelProto without its weights' bytes (see :func:`load_skeleton`): its graph, metadata, dims
    and dtypes, never the weights themselves."""
    return load_skeleton(path)[0]


def load_for_session(path: Path):
    """The ModelProto for an edited copy of the graph run in onnxruntime, without a copy of its weights here:
    every inline initializer of at least ``_SESSION_INLINE_BELOW`` bytes becomes external data of the file
    itself (its own name, the offset and length of its bytes there), read by onnxruntime alone; smaller ones
    (shapes and axes, which graph-level shape inference must read) get their bytes back. The copy must be
    loaded with the model's directory as its external data directory (``models.capture._session_beside``)."""
    model, spans = _parse(path)
    with open(path, "rb") as f:
        for t, span in zip(model.graph.initializer, spans):
            if span is None or t.data_location == 1:     # onnx.TensorProto.EXTERNAL wins over raw_data, as in a reader
                continue
            offset, length = span
            if length < _SESSION_INLINE_BELOW:
                t.raw_data = _pread(Span(path, offset, length), f"{path}: initializer {t.name!r} ends past the end "
                                    "of the file; it was truncated", f)
                continue
            t.data_location = 1
            for key, value in (("location", path.name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=key, value=value)
    return model


def _check_text(path: Path, model) -> None:
    """Names, metadata and external-data entries are text: protobuf hands back bytes for a string
    field that is not UTF-8, which no reader below expects."""
    pieces = [(p.key, p.value) for p in model.metadata_props]
    for t in model.graph.initializer:
        pieces.append((t.name, ""))
        pieces.extend((e.key, e.value) for e in t.external_data)
    for key, value in pieces:
        if not isinstance(key, str) or not isinstance(value, str):
            raise FormatError(f"{path}: a name or metadata entry ({(key if not isinstance(key, str) else value)[:40]!r}) "
                              "is not UTF-8 text; the file is corrupt")


def opset_of(model) -> int | None:
    """The default-domain opset a model imports."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


class OnnxSource(TensorSource):
    format = "onnx"

    def __init__(self, path: Path, options: Options):
        super().__init__(path)
        self.model, self._inline = load_skeleton(path)      # inline bytes: {name: (offset, length)} in the file
        self.metadata = {p.key: p.value for p in self.model.metadata_props}
        meta = graphmeta.from_onnx(self.metadata, path)
        prefix = meta.strip_prefix                      # a wrapper's attribute name (transformers)
        constants = set(meta.constants)                 # the exporter's own, not the source's
        self._inits = {t.name.removeprefix(prefix): t for t in self.model.graph.initializer if t.name not in constants}
        self._aliases: dict[str, str] = {a: k for a, k in meta.aliases.items() if k in self._inits and a not in self._inits}
        # torch.onnx.export (dynamo=False) stores parameters of equal values once: the others are Identity
        # nodes of that initializer, named after the parameter. They are the source's tensors, read as aliases.
        for node in self.model.graph.node:
            if node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1:
                kept, alias = node.input[0].removeprefix(prefix), node.output[0].removeprefix(prefix)
                if kept in self._inits and alias not in self._inits and not alias.startswith(("/", "onnx::")):
                    self._aliases.setdefault(alias, kept)
        opset = opset_of(self.model)
        self.notes.append(f"ONNX opset {opset}, IR version {self.model.ir_version}, producer "
                          f"{self.model.producer_name} {self.model.producer_version}".strip())

    def names(self) -> list[str]:
        return list(self._inits)

    def files(self) -> list[SourceFile]:
        """The model file, then each external data file it names (checked on open to lie inside its directory)."""
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        out = [SourceFile(self.path, "weights")]
        seen: set[str] = set()
        for t in _get_all_tensors(self.model):
            location = _external_entries(t).get("location") if uses_external_data(t) else None
            if location and location not in seen:
                seen.add(location)
                out.append(SourceFile(self.path.parent / location, "external"))
        return out

    def _get(self, name: str):
        try:
            return self._inits[name]
        except KeyError:
            raise FormatError(f"{self.path}: no initializer {name!r} in this ONNX model") from None

    def info(self, name: str) -> TensorInfo:
        t = self._get(name)
        if t.data_type not in ONNX_DTYPES:
            raise UnsupportedError(f"{self.path}: initializer {name!r} has ONNX data type {t.data_type}, which "
                                   "modelport cannot move")
        shape = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in shape) or len(shape) > 64:
            raise FormatError(f"{self.path}: initializer {name!r} has dims {list(shape)[:8]}"
                              f"{'...' if len(shape) > 8 else ''}; sizes must be >= 0 and at most 64 of them: "
                              "the file is corrupt")
        return TensorInfo(name, ONNX_DTYPES[t.data_type], shape)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def span(self, name: str) -> Span | None:
        t = self._get(name)
        if t.data_location != 1:   # onnx.TensorProto.EXTERNAL
            return None
        e = _external_entries(t)
        target = (self.path.resolve().parent / e["location"]).resolve()
        offset, nbytes = int(e.get("offset", 0)), self.info(name).nbytes
        length = int(e["length"]) if "length" in e else None
        size = target.stat().st_size
        if (length is not None and length != nbytes) or offset + nbytes > size:
            raise FormatError(f"{self.path}: initializer {name!r} needs {nbytes} bytes for its dims "
                              f"{list(self.info(name).shape)[:8]}, its external data holds "
                              f"{length if length is not None else size - offset}; the file is corrupt")
        return Span(target, offset, nbytes)

    def read_bytes(self, name: str) -> bytes | memoryview:
        t = self._get(name)
        info = self.info(name)
        span = self.span(name)
        if span is not None:
            return _pread(span, f"{self.path}: tensor {name!r}: external data ends early; the data file is truncated")
        inline = self._inline.get(t.name)
        if inline is not None:                      # raw_data, left in the file when the graph was read
            offset, length = inline
            if length != info.nbytes:
                raise FormatError(f"{self.path}: initializer {name!r} holds {length} bytes for shape "
                                  f"{list(info.shape)} of {info.dtype} ({info.nbytes} bytes); the file is corrupt")
            return _pread(Span(self.path, offset, length),
                          f"{self.path}: initializer {name!r} ends past the end of the file; it was truncated")
        from onnx import numpy_helper

        held = _held_values(t)
        if held != math.prod(info.shape):
            raise FormatError(f"{self.path}: initializer {name!r} holds {held} values for dims {list(info.shape)} "
                              f"({math.prod(info.shape)} values); the file is corrupt")
        try:
            arr = numpy_helper.to_array(t)
        except (ValueError, TypeError, OverflowError) as exc:
            raise FormatError(f"{self.path}: initializer {name!r} cannot be read ({type(exc).__name__}: {exc}); "
                              "the file is corrupt") from exc
        if info.dtype == "bfloat16":
            arr = arr.view("<u2")
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _pread(span: Span, truncated: str, opened=None) -> bytes:
    with open(span.path, "rb") if opened is None else contextlib.nullcontext(opened) as f:
        data = os.pread(f.fileno(), span.nbytes, span.offset)
    if len(data) != span.nbytes:
        raise FormatError(truncated)
    return data


# data type -> the typed field holding its values when raw_data is empty, and how many entries one value takes
_VALUE_FIELDS = {1: ("float_data", 1), 2: ("int32_data", 1), 3: ("int32_data", 1), 5: ("int32_data", 1),
                 6: ("int32_data", 1), 7: ("int64_data", 1), 9: ("int32_data", 1), 10: ("int32_data", 1),
                 11: ("double_data", 1), 14: ("float_data", 2), 15: ("double_data", 2), 16: ("int32_data", 1)}


def _held_values(t) -> int:
    """How many values an initializer without raw_data holds in its typed field."""
    name, per = _VALUE_FIELDS[t.data_type]
    return len(getattr(t, name)) // per


def _looks_like_model(head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, a small varint) followed by another ModelProto field."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in _MODEL_TAGS


class Onnx(Format):
    id = "onnx"
    description = "ONNX model: initializers as tensors, the graph runs in onnxruntime; written by export at opsets 14-24 (default 17)"
    suffixes = (".onnx",)
    runnable = True
    graph = True
    requires = (("onnx", "onnx"),)

    def sniff(self, path: Path) -> bool:
        return path.is_file() and _looks_like_model(read_head(path, 8))

    def open(self, path: Path, options: Options) -> OnnxSource:
        return OnnxSource(path, options)

    def write(self, source: TensorSource, dst: Path, options: Options, progress=None) -> WriteResult:
        raise UnsupportedError(f"{dst}: an ONNX file holds a program; write it with `modelport convert SRC out.onnx` "
                               "(which exports a runnable model)")


register(Onnx())
