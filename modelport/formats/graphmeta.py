"""What modelport's exporter records inside a graph file, read back as untrusted data.

An ONNX file carries ``modelport.*`` entries in ``metadata_props`` (every value a string: JSON for lists
and tables, decimal for numbers); a TorchScript archive carries ``extra/modelport.json`` (one JSON object,
the same keys without the ``modelport.`` prefix). Either may have been written by anyone, so each block
goes through one typed validator here: :func:`from_onnx` and :func:`from_torchscript` return a
:class:`GraphMeta` whose every field has the type its readers expect, or raise a one-line
:class:`FormatError` naming the file, the key and the value. Keys modelport does not read are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import dtypes
from ..errors import FormatError

KINDS = ("causal-lm", "encoder", "tensor")
MAX_INPUTS = 16          # token models take up to four inputs, tensor models one
MAX_RANK = 16
MAX_TEXT = 4096          # names, prefixes, origins


@dataclass(frozen=True)
class InputRecord:
    name: str
    dtype: str                              # canonical dtype name
    shape: tuple[int | str | None, ...]     # an int is fixed (>= 0), a string names a dynamic axis


@dataclass(frozen=True)
class GraphMeta:
    kind: str | None = None
    inputs: tuple[InputRecord, ...] | None = None
    outputs: tuple[str, ...] | None = None
    vocab_size: int | None = None
    max_positions: int | None = None
    strip_prefix: str = ""
    origin: str | None = None
    exporter: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    constants: tuple[str, ...] = ()


def _bad(where: str, key: str, value, want: str) -> FormatError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return FormatError(f"{where}: metadata {key} = {shown} is not {want}; the file is corrupt or was not written "
                       "by modelport (re-export it)")


def _text(where: str, key: str, value) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _bad(where, key, value, "a string")
    return value


def _count(where: str, key: str, value) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 40:
        raise _bad(where, key, value, "a positive integer")
    return value


def _inputs(where: str, key: str, value) -> tuple[InputRecord, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_INPUTS:
        raise _bad(where, key, value, f"a list of 1 to {MAX_INPUTS} inputs")
    out = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, k, item, "an object with name, dtype and shape")
        for part in ("name", "dtype", "shape"):
            if part not in item:
                raise _bad(where, k, item, f"an input record: it has no {part!r}")
        name = _text(where, f"{k}.name", item["name"])
        raw_dtype = _text(where, f"{k}.dtype", item["dtype"])
        dtype = dtypes.canonical(raw_dtype)
        if dtype not in dtypes.DTYPES:
            raise _bad(where, f"{k}.dtype", raw_dtype, "a dtype modelport knows")
        shape = item["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise _bad(where, f"{k}.shape", shape, f"a list of at most {MAX_RANK} sizes")
        for d in shape:
            if d is None or (isinstance(d, str) and 0 < len(d) <= 64):
                continue
            if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                raise _bad(where, f"{k}.shape", shape, "a list of sizes (integers >= 0) and axis names")
        out.append(InputRecord(name, dtype, tuple(shape)))
    return tuple(out)


def _names(where: str, key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(where, key, value, "a list of names")
    return tuple(value)


def _table(where: str, key: str, value) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad(where, key, value, "an object of name -> name")
    return dict(value)


def _build(get, where: str, spell) -> GraphMeta:
    """``get(key)`` -> the decoded value or None; ``spell(key)`` -> the key as the file writes it."""
    values: dict = {}
    if (v := get("kind")) is not None:
        if v not in KINDS:
            raise _bad(where, spell("kind"), v, f"one of {', '.join(KINDS)}")
        values["kind"] = v
    if (v := get("inputs")) is not None:
        values["inputs"] = _inputs(where, spell("inputs"), v)
    if (v := get("outputs")) is not None:
        values["outputs"] = _names(where, spell("outputs"), v)
    for key in ("vocab_size", "max_positions"):
        if (v := get(key)) is not None:
            values[key] = _count(where, spell(key), v)
    for key in ("strip_prefix", "origin", "exporter"):
        if (v := get(key)) is not None:
            values[key] = _text(where, spell(key), v)
    if (v := get("aliases")) is not None:
        values["aliases"] = _table(where, spell("aliases"), v)
    if (v := get("constants")) is not None:
        values["constants"] = _names(where, spell("constants"), v)
    return GraphMeta(**values)


_ONNX_JSON = ("inputs", "outputs", "aliases", "constants")


def from_onnx(props: dict[str, str], where) -> GraphMeta:
    """The ``modelport.*`` entries of an ONNX model's ``metadata_props`` (all strings), validated."""
    where = str(where)

    def get(key):
        raw = props.get(f"modelport.{key}")
        if raw is None or key not in _ONNX_JSON:
            return raw
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise _bad(where, f"modelport.{key}", raw, "valid JSON") from None

    return _build(get, where, lambda key: f"modelport.{key}")


def from_torchscript(meta, where) -> GraphMeta:
    """A TorchScript archive's ``extra/modelport.json`` object (already parsed), validated."""
    where = str(where)
    if not isinstance(meta, dict):
        raise _bad(where, "extra/modelport.json", meta, "a JSON object")
    return _build(meta.get, where, lambda key: key)


__all__ = ["GraphMeta", "InputRecord", "KINDS", "from_onnx", "from_torchscript"]
