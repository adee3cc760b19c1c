"""The command's plumbing: sizes as typed, report files written atomically, a reader of stdout that went away."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click


SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    t = text.strip().upper().replace(" ", "")
    for unit in sorted(SIZE_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            number = t[: -len(unit)]
            break
    else:
        unit, number = "B", t
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except (ValueError, OverflowError):   # inf, nan
        raise click.BadParameter(f"{text!r} is not a size like 5GB, 500MB or 1000000") from None
    if size < 1:
        raise click.BadParameter(f"{text!r}: a size must be at least 1 byte")
    return size


def write_text_atomic(path: Path, text: str) -> None:
    """A report file (``--report``, ``--junit``), replaced whole or not at all."""
    from .atomic import atomic_output

    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def stdout_closed() -> bool:
    """Whether the reader of stdout has gone (a pipe whose other end closed): not some other pipe's error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll, or a stdout without a descriptor: assume it
        return True


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what is left has nowhere to fail."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
