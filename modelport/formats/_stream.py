"""Moving tensor bytes from a source into an open output file: in the kernel, or through a small buffer
where that is as fast or the bytes must be seen (hashed for the manifest, CRC-32s of a zip)."""

from __future__ import annotations

import errno
import functools
import mmap
import os
import queue
import sys
import threading

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
# Through user space, pread/write in 512 KiB pieces (the buffer stays in the L2 cache) copies the same
# 1.42 GB in 0.33-0.35 s at any offsets (0.43 s in 128 KiB pieces, erratic at 1 MiB and above): the
# :class:`Sink` copies unaligned spans that way, and every span whose bytes it hashes.
ALIGN_MOD = 64 << 10
ALIGN_MIN = 4 << 20


def copy_span(span: Span, out_fd: int) -> None:
    """Append ``span`` to ``out_fd`` (at its current position) without passing through Python where the
    kernel can copy it (:func:`_kernel_copy`), through a buffer otherwise."""
    with open(span.path, "rb", buffering=0) as f:
        if not _kernel_copy(f.fileno(), out_fd, span):
            _buffered_copy(f.fileno(), out_fd, span, memoryview(bytearray(_PIECE)))


def _buffered_copy(in_fd: int, out_fd: int, span: Span, buf: memoryview) -> None:
    """``span``'s bytes appended to ``out_fd`` through ``buf``, a piece at a time."""
    offset, left = span.offset, span.nbytes
    while left:
        n = os.preadv(in_fd, [buf[:min(left, len(buf))]], offset)
        if n == 0:
            raise _truncated(span)
        _write_all(out_fd, buf[:n])
        offset, left = offset + n, left - n


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


# -- writing an output file front to back, hashing the bytes as they go ---------------------------

_PIECE = 512 << 10      # bytes copied through user space per read/write: fits the L2 cache
_PER_SLOT = 4           # pieces handed to the hashing thread at a time (fewer wake-ups: 2 MiB a hand-over)
_SLOTS = 4              # buffers in flight between the writer and its hashing thread


class _Worker:
    """One thread that runs ``fn(view)`` for submitted pieces in order; ``wait(ticket)`` returns once the
    piece ``ticket`` (and every earlier one) is done."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._sent = self._done = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modelport-hash-output", daemon=True)
        self._thread.start()

    def submit(self, fn, view) -> int:
        self._sent += 1
        self._queue.put((fn, view))
        return self._sent

    def wait(self, ticket: int) -> None:
        if ticket <= self._done and self.error is None:
            return
        with self._cond:
            while self._done < ticket and self.error is None:
                self._cond.wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Finish what was submitted and end the thread (errors stay in ``error``)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    item[0](item[1])     # hashlib, blake3 and zlib release the GIL on large pieces
                except BaseException as exc:   # noqa: BLE001 - raised in the writer by wait()
                    self.error = exc
            with self._cond:
                self._done += 1
                self._cond.notify_all()


class Sink:
    """An output file written front to back through :meth:`write` and :meth:`copy`.

    With a ``hasher`` (the manifest's, see :mod:`._follow`), or while a CRC-32 is being taken
    (:meth:`crc_begin` … :meth:`crc_end`, the zip writer's members), every byte reaches the file by
    ``os.write`` from a buffer of the sink's own (or immutable ``bytes``) that a second thread also
    feeds to the hasher and the CRC, in file order, while the writer reads the next piece: the digest
    is that of the bytes that landed, with no second pass over the output. The one exception, a
    record that holds a CRC-32 (:meth:`crc_end`), is written with a placeholder and overwritten by
    the thread, which hashes the final bytes in its place. Otherwise tensor bytes move by
    ``copy_file_range`` where the source and output offsets agree modulo a page (the kernel's fast
    case), else through one buffer of :data:`_PIECE` bytes (as fast as the aligned kernel copy, faster
    than the unaligned one; the buffers in flight, 8 MiB, would fall out of the L2 cache: 1.42 GB in
    0.45 s against 0.35 s). A writer that knows how large its file will be says so first
    (:meth:`reserve`): its blocks are then allocated at once instead of write by write (the same copy
    in 0.35 s against 0.59 s without, bench_streaming.py).
    """

    def __init__(self, fd: int, hasher=None):
        self.fd, self.pos = fd, os.lseek(fd, 0, os.SEEK_CUR)
        self._hasher = hasher
        self._crc32 = None           # the CRC-32 function of the member being written
        self._crc: list | None = None  # [running CRC-32] of the member being written (the thread's alone)
        self._worker: _Worker | None = None
        self._bufs: list[bytearray] = []
        self._tickets: list[int] = []
        self._slot = 0
        self._plain: memoryview | None = None     # the one buffer of untapped copies
        self._reserved = 0                        # the file's end as allocated by reserve()

    def reserve(self, nbytes: int) -> None:
        """The next ``nbytes`` bytes will be written: allocate them on disk now, in one call (a full disk says so
        here, before anything is copied). Where the filesystem cannot, the writes allocate as they go. Whatever
        of the reservation is left unwritten is cut off by :meth:`close`."""
        if nbytes > 0 and _allocate(self.fd, self.pos, nbytes):
            self._reserved = max(self._reserved, self.pos + nbytes)

    # the hasher and the CRC are fed by the worker, in order; a piece counts for the CRC of the member
    # being written when it was handed over
    def _feed(self, view) -> None:
        self._hasher.update(view)

    def _feed_crc(self, crc: list, crc32, view) -> None:
        if self._hasher is not None:
            self._hasher.update(view)
        crc[0] = crc32(view, crc[0])

    def _tapped(self) -> bool:
        return self._hasher is not None or self._crc is not None

    def _submit(self, view) -> int:
        if self._worker is None:
            self._worker = _Worker()
        if self._crc is not None:
            return self._worker.submit(functools.partial(self._feed_crc, self._crc, self._crc32), view)
        return self._worker.submit(self._feed, view)

    def write(self, data) -> None:
        """Append ``data`` (bytes-like)."""
        view = memoryview(data).cast("B")
        size = len(view)
        if not self._tapped():
            _write_all(self.fd, view)
        elif isinstance(data, bytes):      # immutable: the thread hashes the very bytes written
            at, step = 0, _PIECE * _PER_SLOT
            while at < size:               # in parts, so the thread hashes one while the next is written
                part = view[at:at + step]
                ticket = self._submit(part)
                for i in range(0, len(part), _PIECE):
                    _write_all(self.fd, part[i:i + _PIECE])
                if size > step and ticket > _SLOTS:     # a large write: a bounded number of its parts in flight
                    self._worker.wait(ticket - _SLOTS)    # (a small one never waits for the copy's hashing)
                at += len(part)
        else:   # a buffer someone else may change (or a map of a file): through private buffers
            at = 0
            while at < size:
                buf = self._buffer()
                n = min(size - at, len(buf))
                buf[:n] = view[at:at + n]
                for i in range(0, n, _PIECE):
                    _write_all(self.fd, buf[i:min(n, i + _PIECE)])
                self._tickets[self._slot - 1] = self._submit(buf[:n])
                at += n
        self.pos += size

    def _buffer(self) -> memoryview:
        """The next of the buffers in flight, once the thread is done with it."""
        if not self._bufs:
            self._bufs = [bytearray(_PIECE * _PER_SLOT) for _ in range(_SLOTS)]
            self._tickets = [0] * _SLOTS
        slot = self._slot
        self._slot = (slot + 1) % _SLOTS
        if self._worker is not None:
            self._worker.wait(self._tickets[slot])
        return memoryview(self._bufs[slot])

    def copy(self, span: Span) -> None:
        """Append ``span``'s bytes from its file: read and written a piece at a time, each buffer of
        pieces handed to the thread once written."""
        with open(span.path, "rb", buffering=0) as f:
            tapped, in_fd = self._tapped(), f.fileno()
            if not tapped and (span.offset - self.pos) % _PAGE == 0 and _kernel_copy(in_fd, self.fd, span):
                self.pos += span.nbytes
                return
            offset, left = span.offset, span.nbytes
            if not tapped:
                if self._plain is None:
                    self._plain = memoryview(bytearray(_PIECE))
                _buffered_copy(in_fd, self.fd, span, self._plain)
                self.pos += span.nbytes
                return
            while left:
                buf = self._buffer()
                filled, room = 0, min(left, len(buf))
                while filled < room:
                    piece = buf[filled:min(room, filled + _PIECE)]
                    n = os.preadv(in_fd, [piece], offset)
                    if n == 0:
                        raise _truncated(span)
                    _write_all(self.fd, piece[:n])
                    filled += n
                    offset += n
                self._tickets[self._slot - 1] = self._submit(buf[:filled])
                left -= filled
                self.pos += filled

    def crc_begin(self, crc32) -> None:
        """What is written from now on counts for a CRC-32 (a zip member's data), computed by
        ``crc32(data, value)`` (zlib's signature)."""
        self._crc32, self._crc = crc32, [0]

    def crc_end(self, record) -> None:
        """End the CRC-32 begun last and append ``record(crc)`` (bytes whose length does not depend on
        ``crc``: a zip data descriptor). Nothing waits: the bytes are written now with a CRC of 0,
        and the thread, once it has the CRC, writes ``record(crc)`` over them and hashes it in their
        place, so the file and the digest both hold the final bytes."""
        crc = self._crc
        self._crc = None
        at = self.pos
        placeholder = record(0)
        _write_all(self.fd, placeholder)
        self.pos += len(placeholder)

        def patch(_) -> None:
            final = record(crc[0])
            if len(final) != len(placeholder) or os.pwrite(self.fd, final, at) != len(final):
                raise RuntimeError(f"could not write the {len(final)} bytes at {at} of the output")
            if self._hasher is not None:
                self._hasher.update(final)

        self._worker.submit(patch, None) if self._worker is not None else patch(None)

    def drain(self) -> None:
        """Wait until the thread has done everything handed to it (CRC-32s included)."""
        if self._worker is not None:
            self._worker.wait(self._worker._sent)

    def close(self) -> tuple[int, str | None]:
        """Wait for the hashing, check that the file is the bytes written: (size, hex digest or None)."""
        self.drain()
        self._stop()
        size = os.fstat(self.fd).st_size
        if self.pos < size == self._reserved:        # reserved more than was written
            os.ftruncate(self.fd, self.pos)
            size = self.pos
        if size != self.pos:
            raise RuntimeError(f"output holds {size} bytes where {self.pos} were written")
        return size, self._hasher.hexdigest() if self._hasher is not None else None

    def _stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            if worker.error is not None:
                raise worker.error
        self._bufs, self._tickets, self._plain = [], [], None

    def abandon(self) -> None:
        """The write failed: stop the thread (what it met is dropped)."""
        try:
            self._stop()
        except BaseException:   # noqa: BLE001 - the write's own error is the one to report
            pass


_PAGE = mmap.PAGESIZE
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_fallocate = None


def _allocate(fd: int, offset: int, nbytes: int) -> bool:
    """Linux's fallocate(2) of ``nbytes`` at ``offset`` (the file grows to cover them): True when done, False
    where the filesystem or the system cannot (not posix_fallocate, which then writes a byte into every
    block); a full disk or quota raises OSError, as the writes would."""
    global _fallocate
    if not sys.platform.startswith("linux"):
        return False
    if _fallocate is None:
        import ctypes

        try:
            f = ctypes.CDLL(None, use_errno=True).fallocate
        except (OSError, AttributeError):
            f = False
        else:
            f.argtypes, f.restype = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
        _fallocate = f
    if not _fallocate:
        return False
    import ctypes

    if _fallocate(fd, 0, offset, nbytes) == 0:
        return True
    err = ctypes.get_errno()
    if err in _FULL:
        raise OSError(err, os.strerror(err))
    return False


def _kernel_copy(in_fd: int, out_fd: int, span: Span) -> bool:
    """copy_file_range of the whole span; False (nothing copied) where the kernel cannot."""
    offset, left = span.offset, span.nbytes
    try:
        while left:
            n = os.copy_file_range(in_fd, out_fd, min(left, 1 << 30), offset)
            if n == 0:
                raise _truncated(span)
            offset += n
            left -= n
        return True
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (18, 22, 38, 95):  # EXDEV EINVAL ENOSYS EOPNOTSUPP
            raise
        if left != span.nbytes:
            raise
        return False


def write_tensor(source: TensorSource, name: str, sink: Sink) -> None:
    """Append tensor ``name`` of ``source`` to ``sink``: copied from its file when its bytes lie in one."""
    span = source.span(name)
    if span is not None:
        sink.copy(span)
    else:
        data = source.read_bytes(name)
        if len(memoryview(data).cast("B")) != source.info(name).nbytes:
            raise RuntimeError(f"{source.path}: {name}: reader returned a wrong number of bytes")
        sink.write(data)
