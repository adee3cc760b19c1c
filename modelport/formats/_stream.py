"""Moving tensor bytes from a source into an open output file, in the kernel when possible."""

from __future__ import annotations

import os

from ..errors import FormatError
from .base import Span, TensorSource

_CHUNK = 64 << 20
# copy_file_range between two files of one filesystem (ext4, Linux 6.18 here) is fastest when each
# call starts page-aligned on both sides: the whole 1.42 GB benchmark file at equal offsets takes
# 0.34 s in one call or in 4 MiB pieces, 0.47 s in pieces cut at its tensors' bounds, and 0.50 s when
# the offsets differ modulo a page; 64 KiB apart (not page-aligned) takes 0.38 s
# (bench_streaming.py --offsets, --pieces). Writers that choose their layout pad large spans
# (ALIGN_MIN bytes or more, so the padding, under 64 KiB, stays under 1/64 of the span) to agree with
# the source modulo 64 KiB; a pt file written from a safetensors file needs close to 64 KiB per such
# span (its headers run ahead). Per-tensor calls at the formats' own offsets stay the bound.
ALIGN_MOD = 64 << 10
ALIGN_MIN = 4 << 20


def copy_span(span: Span, out_fd: int) -> None:
    """Append ``span`` to ``out_fd`` (at its current position) without passing through Python."""
    with open(span.path, "rb") as f:
        in_fd = f.fileno()
        offset, left = span.offset, span.nbytes
        try:
            while left:
                n = os.copy_file_range(in_fd, out_fd, min(left, 1 << 30), offset)
                if n == 0:
                    raise _truncated(span)
                offset += n
                left -= n
            return
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (18, 22, 38, 95):  # EXDEV EINVAL ENOSYS EOPNOTSUPP
                raise
        f.seek(offset)
        for chunk in _chunks(f, left, _CHUNK, span):
            _write_all(out_fd, chunk)


def _truncated(span: Span) -> FormatError:
    return FormatError(f"{span.path}: ends before byte {span.offset + span.nbytes}; the file is truncated, or it shrank "
                       f"while being read (the source changed during the conversion; nothing was written)")


def _chunks(f, left: int, size: int, span: Span):
    while left:
        chunk = f.read(min(left, size))
        if not chunk:
            raise _truncated(span)
        left -= len(chunk)
        yield chunk


def span_chunks(span: Span, size: int = _CHUNK):
    """A span's bytes in pieces of at most ``size`` bytes."""
    with open(span.path, "rb", buffering=0) as f:
        f.seek(span.offset)
        yield from _chunks(f, span.nbytes, size, span)


def read_span(span: Span) -> bytearray:
    """A span's bytes, read (not mapped) into one buffer, so no mapped pages stay resident."""
    buf = bytearray(span.nbytes)
    # the view is released even when reading fails: a view left to the garbage collector with the
    # buffer in one cycle makes CPython print "deallocated bytearray object has exported buffers"
    with open(span.path, "rb", buffering=0) as f, memoryview(buf) as view:
        f.seek(span.offset)
        got = 0
        while got < span.nbytes:
            with view[got:] as rest:
                n = f.readinto(rest)
            if not n:
                raise _truncated(span)
            got += n
    return buf


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_tensor(source: TensorSource, name: str, out_fd: int) -> None:
    """Append tensor ``name`` of ``source`` to ``out_fd``: a kernel copy when its bytes lie in a file."""
    span = source.span(name)
    if span is not None:
        copy_span(span, out_fd)
    else:
        data = source.read_bytes(name)
        if len(memoryview(data).cast("B")) != source.info(name).nbytes:
            raise RuntimeError(f"{source.path}: {name}: reader returned a wrong number of bytes")
        _write_all(out_fd, data)
