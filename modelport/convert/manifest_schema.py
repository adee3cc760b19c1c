"""Reading a manifest that lies on disk: untrusted JSON, checked once against a schema of expected types.

A manifest is read like any JSON input (:func:`modelport.formats._untrusted.read_json_file`: a regular
file, bounded size, depth and numbers) and then checked here, key by key, against :data:`MANIFEST`:
every value modelport reads later has the type it expects, file names are plain relative paths, and
the input sizes a recorded parity check would run again are bounded. :func:`load_manifest` returns a
manifest that passed, or raises :class:`~modelport.errors.FormatError` with one line naming the file
and the key; nothing downstream needs to guard against a missing key or a wrong type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError
from ..formats._untrusted import read_json_file

SCHEMA = "modelport.manifest/1"
MAX_BYTES = 64 << 20              # a manifest listing a million files stays below this

# What a recorded parity check may ask ``verify`` to run again (the defaults are seq lens 1, 8, 32 at batch 2).
MAX_SEQ_LEN = 4096
MAX_BATCH = 32
MAX_TOKENS = 8192                 # batch x seq_len of one input set
MAX_NEW_TOKENS = 256
MAX_INPUT_SETS = 8
MAX_FILES = 1_000_000


class BareMarker(FormatError):
    """The file is modelport's bare directory marker (written with ``--no-manifest``), not a manifest."""


# -- a small schema language ------------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """An object key that may be absent."""
    spec: object


@dataclass(frozen=True)
class Int:
    """An integer (not a boolean) in ``[lo, hi]``."""
    lo: int = 0
    hi: int = 2**63 - 1


@dataclass(frozen=True)
class Text:
    """A string matching ``pattern`` (described as ``what`` in messages)."""
    pattern: str
    what: str


@dataclass(frozen=True)
class Array:
    """A list of at most ``most`` items, each matching ``item``."""
    item: object
    most: int


@dataclass(frozen=True)
class Map:
    """An object whose values (any keys) each match ``value``."""
    value: object
    most: int = 10_000


NULL = type(None)
_JSON_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "an array", NULL: "null",
               float: "a number"}


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object",
            list: "an array", NULL: "null"}.get(type(value), type(value).__name__)


def _describe(spec) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_describe(s) for s in spec)
    if isinstance(spec, Int):
        return f"an integer from {spec.lo} to {spec.hi}"
    if isinstance(spec, Text):
        return spec.what
    if isinstance(spec, (Array, list)):
        return "an array"
    if isinstance(spec, (Map, dict)):
        return "an object"
    return _JSON_NAMES.get(spec, getattr(spec, "__name__", str(spec)))


def _matches(value, spec) -> bool:
    """Whether ``value`` has the shape of ``spec`` at this level (its contents are checked by :func:`_check`)."""
    if isinstance(spec, tuple):
        return any(_matches(value, s) for s in spec)
    if isinstance(spec, Int):
        return type(value) is int and spec.lo <= value <= spec.hi
    if isinstance(spec, Text):
        return isinstance(value, str) and re.fullmatch(spec.pattern, value) is not None
    if isinstance(spec, Array):
        return isinstance(value, list) and len(value) <= spec.most
    if isinstance(spec, (Map, dict)):
        return isinstance(value, dict) and (not isinstance(spec, Map) or len(value) <= spec.most)
    if spec is float:
        return type(value) in (int, float)
    if spec is object:
        return True
    return type(value) is spec


def _check(value, spec, where: str, key: str) -> None:
    if isinstance(spec, tuple):
        chosen = next((s for s in spec if _matches(value, s)), None)
        if chosen is None:
            raise FormatError(f"{where}: manifest key {key} is {_kind(value)}{_shown(value)}, not {_describe(spec)}")
        spec = chosen
    if not _matches(value, spec):
        extra = f" of {len(value)} items" if isinstance(value, (list, dict)) and isinstance(spec, (Array, Map)) else ""
        raise FormatError(f"{where}: manifest key {key} is {_kind(value)}{_shown(value)}{extra}, not {_describe(spec)}"
                          + (f" of at most {spec.most} items" if extra else ""))
    if isinstance(spec, Array):
        for i, item in enumerate(value):
            _check(item, spec.item, where, f"{key}[{i}]")
    elif isinstance(spec, Map):
        for k, v in value.items():
            _check(v, spec.value, where, f"{key}.{k}")
    elif isinstance(spec, dict):
        for k, sub in spec.items():
            if k not in value:
                if isinstance(sub, Opt):
                    continue
                raise FormatError(f"{where}: manifest key {key}.{k} is missing")
            _check(value[k], sub.spec if isinstance(sub, Opt) else sub, where, f"{key}.{k}")


def _shown(value) -> str:
    if type(value) in (int, float, bool) or (isinstance(value, str) and len(value) <= 40):
        return f" ({value!r})"
    return ""


# -- the manifest -----------------------------------------------------------------------------

# A plain relative path: no absolute path, no empty, '.' or '..' part, no backslash, no NUL.
REL_PATH = Text(r"(?!/)(?:(?!\.\.?(?:/|\Z))[^/\\\x00]+/)*(?!\.\.?\Z)[^/\\\x00]+",
                "a plain relative path (no leading /, no '..')")
SHA256 = Text(r"[0-9a-f]{64}", "64 lowercase hex digits (a sha256)")
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096      # what Linux takes for one name and one path
BLAKE3 = Text(r"[0-9a-f]{64}", "64 lowercase hex digits (a blake3)")
MAYBE_STR = (str, NULL)

# "hash" names the digest recorded (manifests written before it hold sha256 alone)
FILE = {"path": REL_PATH, "bytes": Int(), "hash": Opt(Text(r"blake3|sha256", "blake3 or sha256")),
        "sha256": Opt(SHA256), "blake3": Opt(BLAKE3)}
SIDE = {"path": str, "format": MAYBE_STR, "layout": Opt(MAYBE_STR), "directory": bool,
        "files": Array(FILE, MAX_FILES)}
OUTPUT = {**SIDE, "format": str, "architecture": Opt(MAYBE_STR), "tensors": Opt(Int()), "origin": Opt(MAYBE_STR)}
# seq_len 0: a tensor model's input set; only token inputs (input_ids) are made again from the recorded sizes
INPUT_SET = {"seq_len": Opt((Int(0, MAX_SEQ_LEN), NULL)), "shapes": Opt(Map(Array(Int(0, 2**31), 64), 64))}
PARITY = {"passed": Opt((bool, NULL)), "ok": Opt((bool, NULL)), "seed": Opt(Int()),
          "new_tokens": Opt(Int(0, MAX_NEW_TOKENS)), "inputs": Opt(Array(INPUT_SET, MAX_INPUT_SETS))}
OPTIONS = {"arch": Opt(str), "config": Opt((dict, str)), "config_file": Opt(str), "dtype": Opt(str),
           "layout": Opt(str), "shards": Opt(Int(1, 1 << 16)), "strip_prefix": Opt(str)}
MANIFEST = {"schema": str, "written_by": Opt(str), "version": Opt(str), "format": Opt(str), "created": Opt(str),
            "source": SIDE, "output": OUTPUT, "transforms": Opt(Array({"op": str}, MAX_FILES)),
            "options": Opt(OPTIONS), "opset": Opt((Int(1, 1000), NULL)), "parity": Opt((PARITY, NULL)),
            "versions": Opt(Map(str, 100))}


def check_manifest(data, where) -> dict:
    """``data`` (parsed JSON) when it is a manifest of the expected shape; a FormatError naming the key otherwise."""
    if not isinstance(data, dict):
        raise FormatError(f"{where}: not a modelport manifest (it holds {_kind(data)}, not an object)")
    if "schema" not in data and data.get("written_by") == "modelport":
        raise BareMarker(f"{where}: holds only modelport's directory marker (written with --no-manifest); "
                         "no manifest was recorded, so there is nothing to read or verify")
    if data.get("schema") != SCHEMA:
        raise FormatError(f"{where}: not a modelport manifest (schema {SCHEMA!r} expected)")
    _check(data, MANIFEST, str(where), "manifest")
    for side in ("source", "output"):
        for i, f in enumerate(data[side]["files"]):
            name = f["path"].encode("utf-8", "surrogatepass")
            if len(name) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in name.split(b"/")):
                raise FormatError(f"{where}: manifest key manifest.{side}.files[{i}].path is longer than a file "
                                  f"name can be ({MAX_NAME_BYTES} bytes a part, {MAX_PATH_BYTES} in all)")
            if f.get("hash", "sha256") not in f:
                raise FormatError(f"{where}: manifest key manifest.{side}.files[{i}].{f.get('hash', 'sha256')} is missing")
    for i, s in enumerate((data.get("parity") or {}).get("inputs") or ()):
        shape = (s.get("shapes") or {}).get("input_ids") or []
        if shape and shape[0] > MAX_BATCH:
            raise FormatError(f"{where}: manifest key manifest.parity.inputs[{i}] has a batch of {shape[0]}, more than "
                              f"{MAX_BATCH}; refusing to run it again")
        if len(shape) == 2 and shape[0] * shape[1] > MAX_TOKENS:
            raise FormatError(f"{where}: manifest key manifest.parity.inputs[{i}] asks for {shape[0]} x {shape[1]} "
                              f"tokens, more than {MAX_TOKENS}; refusing to run it again")
    return data


def load_manifest(path: Path | str) -> dict:
    """The manifest at ``path`` (a ``.modelport.json`` file, or a directory holding one), read as untrusted
    JSON and checked against :data:`MANIFEST`; a :class:`FormatError` (one line, naming the file and the key)
    for anything else. Fuzzers and the soak call this on every mutated manifest."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        path = path / ".modelport.json"
    data = read_json_file(path, "manifest", limit=MAX_BYTES)
    return check_manifest(data, path)


__all__ = ["BareMarker", "MANIFEST", "MAX_BATCH", "MAX_NEW_TOKENS", "MAX_SEQ_LEN", "MAX_TOKENS", "SCHEMA",
           "check_manifest", "load_manifest"]
