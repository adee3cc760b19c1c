"""Byte-level reading and writing of an ONNX ModelProto's top-level fields, without parsing the graph:
the opset a written file imports, metadata entries appended to it (appended fields merge on parse), and
the model without its initializers' inline bytes (:func:`skeleton`), which are then read from the file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _readvarint(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def top_level(path: Path) -> tuple[int | None, bool]:
    """The default-domain opset of a ModelProto file and whether it has external data, read by walking its
    top-level fields (the graph is skipped by its length, never parsed)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos, opset = 0, None
        while pos < len(buf):
            tag, pos = _readvarint(buf, pos)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _readvarint(buf, pos)
                continue
            if wire != 2:
                return None, False      # not what an exporter writes: let the caller parse it properly
            length, pos = _readvarint(buf, pos)
            if field_no == 8:           # opset_import: OperatorSetIdProto {1: domain, 2: version}
                domain, version, p = "", None, pos
                while p < pos + length:
                    t, p = _readvarint(buf, p)
                    if t == 0x0A:
                        n, p = _readvarint(buf, p)
                        domain, p = bytes(buf[p:p + n]).decode(), p + n
                    elif t == 0x10:
                        version, p = _readvarint(buf, p)
                    else:
                        return None, False
                if domain in ("", "ai.onnx"):
                    opset = version
            pos += length
    return opset, False


def metadata_entry(key: str, value: str) -> bytes:
    """One ModelProto.metadata_props entry (field 14), serialised: appended fields merge on parse."""
    k, v = key.encode(), value.encode()
    body = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(v)) + v
    return b"\x72" + varint(len(body)) + body


# ------------------------------------------------------------------------------- the graph without its weights

_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9      # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
_WIRE_NAMES = {3: "a group start", 4: "a group end", 6: "wire type 6", 7: "wire type 7"}
_FIELD_NAMES = {("ModelProto", _GRAPH): "graph", ("GraphProto", _INITIALIZER): "initializer",
                ("TensorProto", _RAW_DATA): "raw_data"}


def _field(what: str, field_no: int) -> str:
    name = _FIELD_NAMES.get((what, field_no))
    return f"{what} field {field_no}" + (f" ({name})" if name else "")


def _varint_in(buf, pos: int, end: int, path) -> tuple[int, int]:
    """The varint at ``pos``, which must end before ``end``."""
    n = shift = 0
    while True:
        if pos >= end:
            where = "the file ends" if end == len(buf) else "a message ends"
            raise FormatError(f"{path}: {where} inside a varint at byte {pos}; the file is truncated or not an ONNX model")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift >= 70:
            raise FormatError(f"{path}: a varint at byte {pos - 10} runs past 10 bytes; the file is corrupt")


def _fields(buf, pos: int, end: int, path, what: str):
    """``(field number, wire type, tag start, value start, value end)`` of each field of the message in
    ``buf[pos:end]``; a field that runs past ``end`` or has no valid wire type is refused."""
    while pos < end:
        start = pos
        tag, pos = _varint_in(buf, pos, end, path)
        field_no, wire = tag >> 3, tag & 7
        if field_no == 0 or wire in _WIRE_NAMES:
            raise FormatError(f"{path}: {_field(what, field_no)} has {_WIRE_NAMES.get(wire, f'wire type {wire}')} "
                              f"at byte {start}; the file is corrupt or not an ONNX model")
        if wire == 0:
            _, pos = _varint_in(buf, pos, end, path)
            value = pos
        elif wire == 2:
            length, value = _varint_in(buf, pos, end, path)
            pos = value + length
        else:
            value, pos = pos, pos + (8 if wire == 1 else 4)
        if pos > end:
            raise FormatError(f"{path}: {_field(what, field_no)} at byte {start} runs {pos - end} bytes past the "
                              f"end of {'the file' if end == len(buf) else 'its message'}; the file is truncated or corrupt")
        yield field_no, wire, start, value, pos


def _wanted_length_delimited(field_no: int, wire: int, start: int, path, what: str) -> None:
    if wire != 2:
        raise FormatError(f"{path}: {_field(what, field_no)} at byte {start} has wire type {wire}, not length-delimited; "
                          "the file is corrupt or not an ONNX model")


def _message(field_no: int, body: bytes) -> bytes:
    return varint(field_no << 3 | 2) + varint(len(body)) + body


def _tensor(buf, pos: int, end: int, path, spans: list) -> bytes:
    """An initializer's bytes without its ``raw_data``; its span (offset, length) appended to ``spans``
    (None when it has none: the last ``raw_data`` field is the one a parser keeps)."""
    kept, span = [], None
    for field_no, wire, start, value, stop in _fields(buf, pos, end, path, "TensorProto"):
        if field_no == _RAW_DATA:
            _wanted_length_delimited(field_no, wire, start, path, "TensorProto")
            if stop > value:
                span = (value, stop - value)
                continue
            span = None                   # an empty raw_data (a zero-size tensor) is kept as it was
        kept.append(buf[start:stop])
    spans.append(span)
    return b"".join(kept)


def _graph(buf, pos: int, end: int, path, spans: list) -> bytes:
    kept = []
    for field_no, wire, start, value, stop in _fields(buf, pos, end, path, "GraphProto"):
        if field_no == _INITIALIZER:
            _wanted_length_delimited(field_no, wire, start, path, "GraphProto")
            kept.append(_message(_INITIALIZER, _tensor(buf, value, stop, path, spans)))
        else:
            kept.append(buf[start:stop])
    return b"".join(kept)


def skeleton(path: Path) -> tuple[bytes, list[tuple[int, int] | None]]:
    """A ModelProto file re-encoded without the ``raw_data`` of its graph's initializers, and where each
    left-out ``raw_data`` lies in the file: ``(offset, length)`` per initializer in the order a parser lists
    them (None for one without). Everything else (nodes, inputs, metadata, typed data fields, external data
    entries, subgraphs' own tensors) is copied as it is; the file is mapped, so only what is kept is read
    into memory. A file whose structure does not hold together (a truncated varint, a length past the end,
    a wrong wire type) is a one-line :class:`FormatError` naming it."""
    import mmap

    spans: list[tuple[int, int] | None] = []
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b"", spans
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            kept = []
            for field_no, wire, start, value, stop in _fields(buf, 0, len(buf), path, "ModelProto"):
                if field_no == _GRAPH:
                    _wanted_length_delimited(field_no, wire, start, path, "ModelProto")
                    kept.append(_message(_GRAPH, _graph(buf, value, stop, path, spans)))
                else:
                    kept.append(buf[start:stop])
            return b"".join(kept), spans
