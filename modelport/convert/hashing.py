"""Content hashes of the files a manifest lists: blake3 when installed, else sha256; each entry names its own."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..atomic import MARKER
from ..errors import FormatError, MissingDependencyError
from ..formats._untrusted import open_regular

_CHUNK = 1 << 20          # read and hashed at a time: stays in the L2 cache between the two (a little less CPU than 4 MiB)

HASHES = ("blake3", "sha256")        # content hashes a manifest may record, the preferred first


def hash_algorithm() -> str:
    """The content hash new manifests record: blake3 (a dependency of modelport; several times sha256's
    speed, so hashing keeps pace with the copy), sha256 where the ``blake3`` package is missing.
    ``MODELPORT_HASH=sha256`` chooses sha256 (digests to compare with published sha256 sums)."""
    chosen = os.environ.get("MODELPORT_HASH", "").strip().lower()
    if chosen in HASHES:
        return chosen
    try:
        import blake3  # noqa: F401
    except ImportError:
        return "sha256"
    return "blake3"


def _hasher(algorithm: str):
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        try:
            import blake3
        except ImportError as exc:
            raise MissingDependencyError("this manifest records blake3 digests; pip install blake3 "
                                         "to check them") from exc
        return blake3.blake3()
    raise FormatError(f"unknown content hash {algorithm!r} (known: {', '.join(HASHES)})")


class Cancelled(Exception):
    """Hashing was stopped (the conversion it was for failed)."""


def hash_file(path: Path, algorithm: str = "sha256", stop: threading.Event | None = None) -> str:
    """The hex digest of ``path``'s bytes under ``algorithm`` (see :data:`HASHES`); ``stop``, once set,
    ends it with :class:`Cancelled`."""
    h = _hasher(algorithm)
    with open_regular(path) as f:          # a regular file only: a pipe or device would block or never end
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled(str(path))
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])   # hashlib and blake3 release the GIL on large buffers
    return h.hexdigest()


def file_entry(rel: str, path: Path, algorithm: str, known: dict[str, tuple[int, str]] | None = None,
               stop: threading.Event | None = None) -> dict:
    """One file of a manifest: ``{path, bytes, hash: <algorithm>, <algorithm>: <hex digest>}``. Manifests
    written before ``hash`` was recorded hold ``sha256`` alone. ``known``: {real path: (size, digest)}
    hashed while this process wrote the files (:func:`following`); used when the size still agrees."""
    size = path.stat().st_size
    got = (known or {}).get(os.path.realpath(path))
    digest = got[1] if got is not None and got[0] == size else hash_file(path, algorithm, stop)
    return {"path": rel, "bytes": size, "hash": algorithm, algorithm: digest}


def following(algorithm: str | None = None):
    """A block within which the streaming writers hash each output file as they write it (see
    :mod:`modelport.formats._follow`); ``.digests()`` afterwards gives ``known`` for :func:`hash_files`."""
    from ..formats._follow import following as follow_writes

    algorithm = algorithm or hash_algorithm()
    return follow_writes(lambda: _hasher(algorithm))


def recorded_digest(entry: dict) -> tuple[str, str]:
    """(algorithm, hex digest) a manifest's file entry records (the schema made sure it has one)."""
    algorithm = entry.get("hash", "sha256")
    return algorithm, entry[algorithm]


def files_of(path: Path, skip: tuple[str, ...] = (MARKER,)) -> list[tuple[str, Path]]:
    """(name relative to ``path``'s parent or to the directory, file) for a file or every file of a
    directory, sorted; the manifest itself is skipped."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.relative_to(path).as_posix() not in skip:
            out.append((p.relative_to(path).as_posix(), p))
    return out


def hash_files(path: Path, algorithm: str | None = None, known: dict[str, tuple[int, str]] | None = None,
               stop: threading.Event | None = None) -> list[dict]:
    """[:func:`file_entry`] for ``path`` (a file or a directory's files), hashed two at a time with
    ``algorithm`` (default: :func:`hash_algorithm`); ``known``: digests taken while writing them."""
    files = files_of(path)
    results: list[dict | None] = [None] * len(files)
    algorithm = algorithm or hash_algorithm()

    def work(i: int) -> None:
        rel, p = files[i]
        results[i] = file_entry(rel, p, algorithm, known, stop)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(work, range(len(files))))
    return [r for r in results if r is not None]


class BackgroundHash:
    """Hash a file's or directory's files in a thread (the source while the conversion reads and writes
    it); :meth:`cancel` stops it when the conversion fails."""

    def __init__(self, path: Path, algorithm: str | None = None, known: dict[str, tuple[int, str]] | None = None):
        self.path, self.result, self.error = Path(path), None, None
        self.algorithm, self.known = algorithm or hash_algorithm(), known
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelport-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = hash_files(self.path, self.algorithm, self.known, self._stop)
        except BaseException as exc:   # noqa: BLE001 - reported when the manifest is written
            self.error = exc

    def cancel(self) -> None:
        self._stop.set()

    def get(self) -> list[dict]:
        self._thread.join()
        if isinstance(self.error, (OSError, Cancelled)):
            raise FormatError(f"{self.path}: cannot hash it for the manifest ({self.error})")
        if self.error is not None:
            raise self.error
        return self.result or []
