"""Reading what strangers wrote: regular files only, files inside a model directory only, JSON checked.

Every file a reader opens comes through :func:`open_regular` (a FIFO, a device or a socket
would block or never end). Files named inside a model directory (an index's ``weight_map``,
side files such as ``tokenizer.json``) go through :func:`inside`: a plain relative name, no
``..``, no absolute path, and no symbolic link leading out of the directory (the one link that
is followed out is the Hugging Face cache's ``snapshots/<rev>/x -> ../../blobs/<hash>``). Side
files are carried by an allow-list (:func:`side_files`); everything else is skipped with a note.

JSON from a file (safetensors headers, ``config.json``, index files, ``params.json``) is parsed
by :func:`load_json`: nesting depth, number spellings (no NaN/Infinity, no integers of more than
:data:`MAX_INT_DIGITS` digits), and strings (no lone surrogates) are checked once, where it is read,
so every later step sees plain, finite, printable data. Any violation is a :class:`FormatError`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

from ..errors import FormatError

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 100         # far beyond any size or setting (HF writes 1e30 as 31 digits); 5000-digit integers are refused
MAX_RANK = 64                # dimensions of a tensor (numpy's own limit)
MAX_EXPANSION = 16           # a file's tensors may hold at most this many times the bytes of its storages (+1 MiB)
EXPANSION_SLACK = 1 << 20

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_regular(path: Path, what: str = "input") -> os.stat_result:
    """The stat of ``path`` when it is a regular file or a directory; FormatError otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise FormatError(f"{path}: not a regular file or directory (a pipe, device or socket); modelport reads only files")
    return st


def open_regular(path: Path):
    """``path`` opened for binary reading, refused (without blocking) unless it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot open ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{path}: not a regular file (a pipe, device or socket); modelport reads only files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def still_whole(path: Path, size: int) -> None:
    """Refuse to touch a file map of ``path`` once the file is shorter than ``size`` (it shrank during
    the conversion): reading mapped pages past its end would kill the process with SIGBUS. The check
    narrows that window to the copy of one tensor; it cannot close it."""
    try:
        now = os.stat(path).st_size
    except OSError:
        now = -1
    if now < size:
        raise FormatError(f"{path}: shrank from {size} to {max(now, 0)} bytes while being read; the source changed "
                          f"during the conversion; nothing was written")


# -- files inside a model directory ---------------------------------------------------------------

def inside(root: Path, name: str, what: str) -> Path:
    """``root / name`` when ``name`` is a plain relative path to a regular file inside ``root``."""
    if not isinstance(name, str) or not name or "\x00" in name or _SURROGATE.search(name):
        raise FormatError(f"{root}: {what} {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or name.startswith(("/", "\\")) or any(p.startswith(".git") for p in rel.parts):
        raise FormatError(f"{root}: {what} {name!r} points outside the model directory; refusing to read it")
    path = root / rel
    if not _stays_inside(root, path):
        raise FormatError(f"{root}: {what} {name!r} is a link that leads outside the model directory; refusing to read it")
    return path


def _stays_inside(root: Path, path: Path) -> bool:
    try:
        real, base = path.resolve(strict=False), root.resolve(strict=False)
    except (OSError, RuntimeError):       # a link loop
        return False
    if real == base or base in real.parents:
        return True
    # The Hugging Face cache: <repo>/snapshots/<revision>/<file> -> ../../blobs/<hash>
    return (base.parent.name == "snapshots" and real.parent == base.parent.parent / "blobs"
            and not path.is_dir())


def is_regular_inside(root: Path, path: Path) -> bool:
    """True for a regular file (after allowed links) inside ``root``."""
    if not _stays_inside(root, path):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


# What a model directory holds besides its weights and config (Hugging Face and Meta layouts).
SIDE_FILES = re.compile(
    r"(tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|generation_config\.json"
    r"|vocab\.(json|txt)|merges\.txt|spiece\.model|sentencepiece\.bpe\.model|.*\.tiktoken|preprocessor_config\.json"
    r"|processor_config\.json|chat_template\.(json|jinja)|README(\.md)?|LICEN[CS]E(\.md|\.txt)?|USE_POLICY\.md|NOTICE(\.txt)?"
    r"|params\.json|checklist\.chk)\Z", re.IGNORECASE)


def side_files(root: Path, skip: set[str], notes: list[str]) -> dict[str, Path]:
    """Allow-listed regular files directly inside ``root`` (not in ``skip``); a note names what was left out."""
    carried: dict[str, Path] = {}
    left: list[str] = []
    for p in sorted(root.iterdir()):
        if p.name in skip:
            continue
        if SIDE_FILES.match(p.name) and is_regular_inside(root, p):
            carried[p.name] = p
        else:
            left.append(p.name + ("/" if p.is_dir() else ""))
    if left:
        shown = ", ".join(left[:6]) + (f" and {len(left) - 6} more" if len(left) > 6 else "")
        notes.append(f"not carried (not a model file, or not a regular file inside the directory): {shown}")
    return carried


# -- JSON ----------------------------------------------------------------------------------------

def _bad_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:30]} is out of range")
    return v


def load_json(raw: bytes | str, where, what: str = "JSON", max_depth: int = MAX_JSON_DEPTH):
    """Parse ``raw``; FormatError naming ``where`` for anything but plain, finite, shallow JSON.
    ``what`` names the document in messages ("config.json", "safetensors header")."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        if isinstance(raw, memoryview):
            text = bytes(raw).decode("utf-8")
        value = json.loads(text, parse_constant=_bad_constant, parse_int=_int, parse_float=_float)
    except RecursionError:
        raise FormatError(f"{where}: {what} is nested too deeply (more than {max_depth} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:   # JSONDecodeError is a ValueError
        raise FormatError(f"{where}: {what} is not valid JSON ({str(exc)[:120]})") from None
    _check_tree(value, where, what, max_depth)
    return value


def _check_tree(value, where, what: str, max_depth: int) -> None:
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > max_depth:
            raise FormatError(f"{where}: {what} is nested too deeply (more than {max_depth} levels)")
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise FormatError(f"{where}: {what} holds a string that is not valid Unicode (a lone surrogate)")
        elif isinstance(v, dict):
            for k, x in v.items():
                if _SURROGATE.search(k):
                    raise FormatError(f"{where}: {what} holds a key that is not valid Unicode (a lone surrogate)")
                stack.append((x, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def read_json_file(path: Path, what: str, limit: int = 64 << 20):
    """A JSON file of at most ``limit`` bytes, read through :func:`open_regular` and :func:`load_json`."""
    with open_regular(path) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise FormatError(f"{path}: {what} is larger than {limit >> 20} MiB; it is not a {what}")
    return load_json(raw, path, what)


def expect(value, kind, where, what: str):
    """``value`` when it is of JSON type ``kind`` (``int`` excludes booleans); FormatError otherwise."""
    if kind is int:
        ok = type(value) is int
    elif kind is float:
        ok = type(value) in (int, float)
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = {int: "an integer", float: "a number", str: "a string", dict: "an object", list: "an array", bool: "true or false"}
        raise FormatError(f"{where}: {what} is {_kind(value)}, not {names.get(kind, kind.__name__)}")
    return value


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object", list: "an array",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_expansion(where, logical: int, stored: int, allow: bool) -> None:
    """Refuse tensors that together hold far more bytes than the storages they view (stride-0 and
    overlapping views), unless ``allow`` (``--allow-expanded``)."""
    if not allow and logical > MAX_EXPANSION * stored + EXPANSION_SLACK:
        raise FormatError(
            f"{where}: its tensors hold {logical:,} bytes but their storages only {stored:,} (overlapping or "
            f"broadcast views, more than {MAX_EXPANSION}x); refusing to expand them; pass --allow-expanded if you "
            f"trust the file")
