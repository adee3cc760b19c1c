"""Atomic outputs: write beside the destination, rename into place, leave nothing on failure."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterator

from . import interrupt
from ..errors import DestinationExistsError, OutputError, OverlapError, opt

# Errors of the output side, reported as one line (exit 2) rather than as a bug.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))

# Written into every directory output; --force replaces a non-empty directory only when it holds this.
MARKER = ".modelport.json"

_TEMP = re.compile(r"^\.(?P<name>.+)\.modelport-(?P<pid>\d+)\.tmp$")


def check_destination(dst: Path, force: bool) -> None:
    """Refuse an existing ``dst`` without ``force``, and with it a non-empty directory unless modelport's
    marker there (a regular file, not a link) lists every entry the directory holds."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if not force:
        raise DestinationExistsError(f"{dst}: already exists; choose another path or pass {opt('force')} to replace it")
    if dst.is_dir() and not dst.is_symlink() and any(dst.iterdir()):
        why = _not_ours(dst)
        if why:
            raise DestinationExistsError(
                f"{dst}: is a directory that modelport did not write, or holds files it did not write ({why}); "
                f"{opt('force')} replaces only files and "
                "modelport's own directory outputs, never other files: remove it yourself or choose another path")


MARKER_LIMIT = 16 << 20     # a marker holding a manifest that lists many files stays far below this


def marker_entries(directory: Path) -> set[str]:
    """The paths (relative, ``/``-separated) that ``directory``'s marker says modelport wrote there: the
    ``files`` of a bare marker, or the ``output.files`` of a directory manifest. A :class:`ValueError`
    saying why when the marker is not a regular file or not modelport's."""
    marker = directory / MARKER
    try:
        st = os.lstat(marker)
    except FileNotFoundError:
        raise ValueError(f"it has no {MARKER}") from None
    except OSError as exc:
        raise ValueError(f"its {MARKER} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"its {MARKER} is not a regular file")
    if st.st_size > MARKER_LIMIT:
        raise ValueError(f"its {MARKER} is larger than {MARKER_LIMIT >> 20} MiB")
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            record = json.loads(f.read(MARKER_LIMIT + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"its {MARKER} is not modelport's marker (not readable JSON)") from None
    if not isinstance(record, dict) or record.get("written_by") != "modelport":
        raise ValueError(f"its {MARKER} is not modelport's marker")
    output = record.get("output")
    if isinstance(output, dict) and output.get("directory") is True:       # a directory manifest
        files = output.get("files")
        names = [f.get("path") for f in files if isinstance(f, dict)] if isinstance(files, list) else None
    else:
        names = record.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) and _plain(n) for n in names):
        raise ValueError(f"its {MARKER} does not list the files modelport wrote there")
    return set(names)


def _plain(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and "\x00" not in name and all(p not in ("", ".", "..") for p in parts)


def _not_ours(directory: Path) -> str | None:
    """Why ``directory`` may not be replaced: its marker is not modelport's, or it holds an entry the
    marker does not list (a file added since, a link, a FIFO). None when every entry is listed."""
    try:
        listed = marker_entries(directory)
    except ValueError as exc:
        return str(exc)
    parents = {"/".join(n.split("/")[:i]) for n in listed for i in range(1, n.count("/") + 1)}
    unreadable: list[OSError] = []
    for root, dirs, files in os.walk(directory, onerror=unreadable.append):        # links are not followed
        for name in dirs + files:
            full = Path(root, name)
            rel = full.relative_to(directory).as_posix()
            if rel == MARKER:
                continue
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                mode = 0
            if stat.S_ISDIR(mode) and rel in parents or stat.S_ISREG(mode) and rel in listed:
                continue
            return f"its {MARKER} does not list {rel!r}"
    if unreadable:
        return f"{unreadable[0].filename} cannot be listed"
    return None


def write_marker(directory: Path, **fields) -> None:
    """Mark a directory output as modelport's (what wrote it and how: ``version``, ``format`` …, and the
    ``files`` it holds, so a later --force may replace it while it holds nothing else)."""
    directory = Path(directory)
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and not p.is_symlink() and p.relative_to(directory).as_posix() != MARKER)
    record = {"written_by": "modelport", **fields, "files": files}
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
        if pid == os.getpid() or process_alive(pid):
            continue
        _remove(entry)
        notes.append(f"removed {entry}, left by an earlier conversion (process {pid}) that did not finish")
    return notes


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts): a temporary it left is not stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: alive, someone else's
        return True
    return True


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


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes a plain ``open``/``mkdir`` would:
    0666 & ~umask for files, 0777 & ~umask for directories. Writers that create files privately (onnx's
    external data and ``mkstemp`` make 0600, ``mkdtemp`` 0700) or with a fixed mode end up like the rest."""
    mask = _umask()
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, topdown=False):     # children first: a mode without x comes last
            for name in files + dirs:
                _chmod_plain(os.path.join(root, name), mask)
    _chmod_plain(path, mask)


def _chmod_plain(path, mask: int) -> None:
    st = os.lstat(path)                  # never through a link
    if stat.S_ISDIR(st.st_mode):
        os.chmod(path, 0o777 & ~mask)
    elif stat.S_ISREG(st.st_mode):
        os.chmod(path, 0o666 & ~mask)


def output_error(dst: Path, exc: OSError) -> OutputError:
    """One line for an OSError met while writing ``dst``."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EFBIG: "the file is too large "
            "for the filesystem", errno.EROFS: "the filesystem is read-only"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"{dst}: cannot write the output: {what}; nothing was written")


@contextlib.contextmanager
def atomic_output(dst: Path | str, force: bool = False, notes: list[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on any failure
    (Ctrl-C included) it is removed and ``dst`` is left as it was. Stale temporaries of ``dst`` from
    dead processes are removed first, each with a note appended to ``notes``.

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
    removed = remove_stale_temps(dst)
    if notes is not None:
        notes.extend(removed)
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
        follow_umask(tmp)
        interrupt.commit()         # an interrupt that something swallowed still stops the rename
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
