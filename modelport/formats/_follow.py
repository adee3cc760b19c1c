"""Hashing an output file as it is written, for the conversion's manifest.

While a :func:`following` block is active (the conversion's manifest opens one), a streaming writer that
creates an output file asks :func:`follow` for a :class:`Hashed` record: its ``hasher`` goes to the
file's :class:`~._stream.Sink`, which feeds it every byte it writes, from the very buffer it hands to
``os.write``, in a thread beside the copy; when the file is complete the writer records its size and
digest with :meth:`Hashed.done`. The digest is that of the bytes that landed in the file, taken
without reading the file again.

The hash object comes from the caller (``following(new_hasher)``); this module knows no algorithm.
Outside a :func:`following` block, :func:`follow` returns a record without a hasher that keeps nothing.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator

_FOLLOWING: ContextVar["Followed | None"] = ContextVar("modelport_following", default=None)


class Hashed:
    """One output file's hasher and, once the writer finished it, its (size, hex digest)."""

    def __init__(self, hasher=None):
        self.hasher = hasher
        self.result: tuple[int, str] | None = None

    def done(self, size: int, digest: str | None) -> None:
        """The file is complete: ``size`` bytes, all of them fed to the hasher, which gave ``digest``."""
        if self.hasher is not None and digest is not None:
            self.result = (size, digest)


IDLE = Hashed()        # outside a following block: no hasher, nothing kept


class Followed:
    """The output files hashed inside one :func:`following` block, by output path."""

    def __init__(self, new_hasher: Callable[[], object]):
        self.new_hasher = new_hasher
        self.hashed: dict[str, Hashed] = {}

    def digests(self) -> dict[str, tuple[int, str]]:
        """{resolved path: (size, hex digest)} of every file written to the end; a file whose write
        failed or was not finished is left out (the caller hashes it from disk)."""
        return {key: h.result for key, h in self.hashed.items() if h.result is not None}


@contextlib.contextmanager
def following(new_hasher: Callable[[], object]) -> Iterator[Followed]:
    """Within the block, writers hash each output file they create with a fresh ``new_hasher()``."""
    followed = Followed(new_hasher)
    token = _FOLLOWING.set(followed)
    try:
        yield followed
    finally:
        _FOLLOWING.reset(token)


def follow(path: Path) -> Hashed:
    """A :class:`Hashed` record with a fresh hasher for the output file ``path`` inside a
    :func:`following` block, else :data:`IDLE`."""
    followed = _FOLLOWING.get()
    if followed is None:
        return IDLE
    h = Hashed(followed.new_hasher())
    followed.hashed[os.path.realpath(path)] = h
    return h
