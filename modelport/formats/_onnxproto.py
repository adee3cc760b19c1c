"""Byte-level reading and writing of an ONNX ModelProto's top-level fields, without parsing the graph:
the opset a written file imports, and metadata entries appended to it (appended fields merge on parse)."""

from __future__ import annotations

from pathlib import Path


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
