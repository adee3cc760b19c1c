"""Atomic outputs: write beside the destination, rename into place, leave nothing on failure."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import DestinationExistsError, OutputError

# Errors of the output side, reported as one line (exit 2) rather than as a bug.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_destination(dst: Path, force: bool) -> None:
    if (dst.exists() or dst.is_symlink()) and not force:
        raise DestinationExistsError(f"{dst}: already exists; choose another path or pass --force to replace it")


def _check_parent(dst: Path) -> None:
    """Refuse a destination modelport cannot or must not create: under /proc, /sys, /dev, or below a file."""
    real = dst.parent.resolve()
    shm = Path("/dev/shm")
    if any(real == d or d in real.parents for d in _SYSTEM_DIRS) and not (real == shm or shm in real.parents):
        raise OutputError(f"{dst}: inside the system directory {real}; choose a destination on a real filesystem")
    for p in (real, *real.parents):
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{dst}: {p} is a file, not a directory; choose another destination")
            break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def output_error(dst: Path, exc: OSError) -> OutputError:
    """One line for an OSError met while writing ``dst``."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EFBIG: "the file is too large "
            "for the filesystem", errno.EROFS: "the filesystem is read-only"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"{dst}: cannot write the output: {what}; nothing was written")


@contextlib.contextmanager
def atomic_output(dst: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on any failure
    (Ctrl-C included) it is removed and ``dst`` is left as it was.

    A file replaces a file (or a link) in one ``os.replace``, so there is no moment without a
    destination. A directory replacing an existing one is swapped in two renames (Linux has no
    portable atomic exchange), the old one removed afterwards."""
    dst = Path(dst)
    check_destination(dst, force)
    _check_parent(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{dst}: cannot create its directory {dst.parent} ({exc.strerror})") from exc
    tmp = dst.parent / f".{dst.name}.modelport-{os.getpid()}.tmp"
    _remove(tmp)
    try:
        try:
            yield tmp
        except OSError as exc:
            ours = exc.filename is not None and str(exc.filename).startswith(str(tmp))
            if exc.errno in _OUTPUT_ERRNOS or (ours and exc.errno in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG)):
                raise output_error(dst, exc) from exc
            raise
        if not tmp.exists():
            raise RuntimeError(f"writer produced nothing at {tmp}")
        if dst.exists() or dst.is_symlink():
            check_destination(dst, force)
            if not tmp.is_dir() and not (dst.is_dir() and not dst.is_symlink()):
                os.replace(tmp, dst)
                return
            old = dst.parent / f".{dst.name}.modelport-{os.getpid()}.old"
            os.rename(dst, old)
            try:
                os.rename(tmp, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            _remove(old)
        else:
            os.rename(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
