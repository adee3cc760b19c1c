"""Atomic outputs: write beside the destination, rename into place, leave nothing on failure."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from . import interrupt
from .errors import DestinationExistsError, OverlapError, opt

# Written into every directory output; --force replaces a non-empty directory only when it holds this.
MARKER = ".modelport.json"

_TEMP = re.compile(r"^\.(?P<name>.+)\.modelport-(?P<pid>\d+)\.tmp$")


def check_destination(dst: Path, force: bool) -> None:
    """Refuse an existing ``dst`` without ``force``, and with it a non-empty directory modelport did not write."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if not force:
        raise DestinationExistsError(f"{dst}: already exists; choose another path or pass {opt('force')} to replace it")
    if dst.is_dir() and not dst.is_symlink() and any(dst.iterdir()) and not (dst / MARKER).is_file():
        raise DestinationExistsError(
            f"{dst}: is a directory that modelport did not write (it has no {MARKER}); {opt('force')} replaces only "
            "files and modelport's own directory outputs, never other files: remove it yourself or choose another path")


def write_marker(directory: Path, **fields) -> None:
    """Mark a directory output as modelport's (what wrote it and how), so a later --force may replace it."""
    from . import __version__

    record = {"written_by": "modelport", "version": __version__, **fields}
    (directory / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _footprint(src: Path) -> list[str]:
    """The real paths a source reads: itself and, for a directory, everything under it (symlinks followed)."""
    paths = [os.path.realpath(src)]
    if src.is_dir():
        for root, dirs, files in os.walk(src):
            for name in files + dirs:
                paths.append(os.path.realpath(os.path.join(root, name)))
    return paths


def check_overlap(src: Path, dst: Path, extra: list[Path] | None = None) -> None:
    """Refuse a destination that is the source, contains it, or lies inside a source directory, however
    either is spelled (relative paths, ``..``, symlinks, hard links). ``extra``: other files the source reads."""
    src, dst = Path(src), Path(dst)
    real_dst = os.path.realpath(dst)
    real_src = os.path.realpath(src)
    reads = _footprint(src) + [os.path.realpath(p) for p in extra or ()]
    why = None
    if any(_inside(p, real_dst) for p in reads):
        why = "is the source" if real_dst in (real_src,) else "contains the source"
    elif src.is_dir() and _inside(real_dst, real_src):
        why = "lies inside the source directory"
    elif dst.exists() and src.exists():
        with contextlib.suppress(OSError):
            if os.path.samefile(src, dst):
                why = "is another name for the same file as"
    if why:
        raise OverlapError(f"{dst}: the destination {why} {src}; writing there would destroy the input, so nothing "
                           "was done: choose a destination outside the source")


def remove_stale_temps(dst: Path) -> list[str]:
    """Remove the temporaries of ``dst`` left by conversions whose process is gone (killed, power cut);
    a note for each. Temporaries of running processes are left alone."""
    notes = []
    parent = dst.parent if str(dst.parent) else Path(".")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return notes
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or m.group("name") != dst.name:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        _remove(entry)
        notes.append(f"removed {entry}, left by an earlier conversion (process {pid}) that did not finish")
    return notes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: alive, someone else's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(dst: Path | str, force: bool = False, notes: list[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on any failure
    (Ctrl-C included) it is removed and ``dst`` is left as it was. Stale temporaries of ``dst`` from
    dead processes are removed first, each with a note appended to ``notes``."""
    dst = Path(dst)
    check_destination(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temps(dst)
    if notes is not None:
        notes.extend(removed)
    tmp = dst.parent / f".{dst.name}.modelport-{os.getpid()}.tmp"
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced nothing at {tmp}")
        interrupt.commit()         # an interrupt that something swallowed still stops the rename
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
