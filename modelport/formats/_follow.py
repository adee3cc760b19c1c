"""Hashing an output file while it is written, in a thread that follows the writer.

The streaming writers (safetensors, the torch zip) move tensor bytes with ``copy_file_range``, so the
bytes never pass through the process; hashing the output after the write would read the whole file a
second time, after the copy, on one core. Instead, while a :func:`following` block is active (the
conversion's manifest opens one), a writer that opens an output file asks :func:`follow` for a
:class:`Follower` and tells it how far the file is final (written and never to change again: a zip
member's data descriptor counts once its CRC-32 is patched in). A thread hashes the final bytes through
short-lived read-only maps of the page cache (no copy, no disk read) beside the copy of the next tensor,
so the output's digest is ready when the last byte is written.

The hash object comes from the caller (``following(new_hasher)``); this module knows no algorithm.
Outside a :func:`following` block, :func:`follow` returns a follower that does nothing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator

_WINDOW = 16 << 20          # output bytes mapped at a time
_BATCH = 4 << 20            # the thread waits for this many new final bytes (or the end) before hashing

_FOLLOWING: ContextVar["Followed | None"] = ContextVar("modelport_following", default=None)


class Follower:
    """Hashes one output file from its start up to what the writer declares final."""

    def __init__(self, path: Path, hasher):
        self.path, self._hasher = Path(path), hasher
        self._final, self._done, self._closed, self._size = 0, 0, False, None
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))   # the writer's may be write-only
        self._thread = threading.Thread(target=self._run, name="modelport-follow", daemon=True)
        self._thread.start()

    def final(self, pos: int) -> None:
        """Bytes before ``pos`` are written and will not change."""
        with self._cond:
            if pos > self._final:
                self._final = pos
                if pos - self._done >= _BATCH:
                    self._cond.notify()

    def close(self, size: int) -> None:
        """The file is complete at ``size`` bytes; the rest is hashed (call :meth:`digest` for the result)."""
        with self._cond:
            self._final, self._size, self._closed = size, size, True
            self._cond.notify()

    def abandon(self) -> None:
        """The write failed: stop hashing and let go of the file."""
        with self._cond:
            self._closed, self._error = True, self._error or RuntimeError("abandoned")
            self._cond.notify()
        self._thread.join()

    def digest(self) -> tuple[int, str]:
        """(size, hex digest) of the complete file; raises what the thread met (an OSError)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._size is None:
            raise RuntimeError(f"{self.path}: the writer never closed its follower")
        return self._size, self._hasher.hexdigest()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and self._final - self._done < _BATCH:
                        self._cond.wait()
                    upto, closed = self._final, self._closed
                if self._error is not None:
                    return
                self._hash(self._done, upto)
                with self._cond:
                    self._done = upto
                if closed and upto == self._final:
                    return
        except BaseException as exc:   # noqa: BLE001 - handed to digest()
            self._error = exc
        finally:
            os.close(self._fd)

    def _hash(self, at: int, end: int) -> None:
        update = self._hasher.update
        while at < end:
            start = at - at % mmap.ALLOCATIONGRANULARITY
            n = min(end - start, _WINDOW)
            with mmap.mmap(self._fd, n, access=mmap.ACCESS_READ, offset=start) as m, memoryview(m) as view, \
                    view[at - start:] as part:
                update(part)          # hashlib and blake3 release the GIL: runs beside the next copy
            at = start + n


class _Idle:
    """The follower outside a :func:`following` block: does nothing."""

    def final(self, pos: int) -> None:
        pass

    def close(self, size: int) -> None:
        pass

    def abandon(self) -> None:
        pass


IDLE = _Idle()


class Followed:
    """The followers opened inside one :func:`following` block, by output path."""

    def __init__(self, new_hasher: Callable[[], object]):
        self.new_hasher = new_hasher
        self.followers: dict[str, Follower] = {}

    def digests(self) -> dict[str, tuple[int, str]]:
        """{resolved path: (size, hex digest)} of every file written to the end; a file whose follower
        failed is left out (the caller hashes it again)."""
        out = {}
        for key, f in self.followers.items():
            try:
                out[key] = f.digest()
            except (OSError, RuntimeError, ValueError):
                continue
        return out

    def abandon(self) -> None:
        for f in self.followers.values():
            f.abandon()


@contextlib.contextmanager
def following(new_hasher: Callable[[], object]) -> Iterator[Followed]:
    """Within the block, writers hash each output file they open with a fresh ``new_hasher()``."""
    followed = Followed(new_hasher)
    token = _FOLLOWING.set(followed)
    try:
        yield followed
    except BaseException:
        followed.abandon()
        raise
    finally:
        _FOLLOWING.reset(token)


def follow(path: Path):
    """A :class:`Follower` for the output file ``path`` (already created) inside a :func:`following` block,
    else one that does nothing."""
    followed = _FOLLOWING.get()
    if followed is None:
        return IDLE
    try:
        f = Follower(path, followed.new_hasher())
    except OSError:         # cannot open it to read: the manifest hashes the finished file instead
        return IDLE
    followed.followers[os.path.realpath(path)] = f
    return f
