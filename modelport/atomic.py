"""Atomic outputs: write beside the destination, rename into place, leave nothing on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import DestinationExistsError


def check_destination(dst: Path, force: bool) -> None:
    if (dst.exists() or dst.is_symlink()) and not force:
        raise DestinationExistsError(f"{dst}: already exists; choose another path or pass --force to replace it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(dst: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on any failure
    (Ctrl-C included) it is removed and ``dst`` is left as it was."""
    dst = Path(dst)
    check_destination(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.modelport-{os.getpid()}.tmp"
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced nothing at {tmp}")
        if dst.exists() or dst.is_symlink():
            check_destination(dst, force)
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
