"""The format registry: every adapter registered once, looked up by id, suffix or content."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import FormatError, MissingDependencyError, UnsupportedError
from ._registry import _REGISTRY, register
from ._untrusted import check_regular
from .base import (Format, Options, ReadOptions, SourceFile, TensorInfo, TensorSource, WriteOptions, WriteResult, read_head,
                   read_options)

# Adapter modules, imported on first use of the registry. Each calls ``_registry.register`` once.
_MODULES = ("safetensors", "torchscript", "pt", "hf", "t7", "meta", "onnx")   # torchscript before pt: both are torch zips
# The order formats are listed in (``modelport formats``, error messages): weight formats, the
# directory formats, the graph formats, then Lua Torch7. Detection tries them in _MODULES's order.
LISTED = ("pt", "safetensors", "hf", "meta", "torchscript", "onnx", "t7")

_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODULES:
            importlib.import_module(f"{__name__}.{mod}")
        # sniffing goes in _MODULES' order, whichever adapter imported another first (torchscript imports pt)
        order = {m: i for i, m in enumerate(_MODULES)}
        ranked = sorted(_REGISTRY.items(), key=lambda item: order.get(item[0], len(order)))
        _REGISTRY.clear()
        _REGISTRY.update(ranked)


def all_formats() -> list[Format]:
    """Every registered format, in the listed order (LISTED, then any other in registration order)."""
    _load()
    rank = {fid: i for i, fid in enumerate(LISTED)}
    return sorted(_REGISTRY.values(), key=lambda f: rank.get(f.id, len(rank)))


def _detection_order() -> list[Format]:
    _load()
    rank = {mod: i for i, mod in enumerate(_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda f: rank.get(f.id, len(rank)))


def get(format_id: str) -> Format:
    _load()
    try:
        return _REGISTRY[format_id]
    except KeyError:
        raise UnsupportedError(f"unknown format {format_id!r}; known formats: {', '.join(f.id for f in all_formats())}") from None


def _usable(fmt: Format, path: Path) -> Format:
    missing = fmt.missing()
    if missing:
        raise MissingDependencyError(f"{path}: reading format {fmt.id!r} needs {', '.join(missing)}; pip install {' '.join(missing)}")
    return fmt


def detect(path: Path) -> Format:
    """The format of ``path`` by its content; a clear error saying what the file is otherwise."""
    path = Path(path)
    check_regular(path)
    for fmt in _detection_order():
        if fmt.can_read and fmt.sniff(path):
            return _usable(fmt, path)
    raise FormatError(f"{path}: {describe_unknown(path)}; known formats: {', '.join(f.id for f in all_formats())} (use --from to force one)")


def for_suffix(path: Path) -> Format | None:
    name = Path(path).name.lower()
    for fmt in _detection_order():
        if any(name.endswith(s) for s in fmt.suffixes):
            return fmt
    return None


def open(path: Path | str, format: str | None = None, options: Options | ReadOptions | None = None) -> TensorSource:  # noqa: A001
    """Open a checkpoint lazily: names, shapes and dtypes now, tensor data on demand.

    The source holds what the file holds; the model config a Meta checkpoint implies is worked
    out a layer up (:func:`modelport.open`)."""
    path = Path(path)
    options = read_options(options)
    check_regular(path)
    fmt = _usable(get(format), path) if format else detect(path)
    if not fmt.can_read:
        raise UnsupportedError(f"{path}: format {fmt.id!r} cannot be read")
    check_regular(path)
    return fmt.open(path, options)


def describe_unknown(path: Path) -> str:
    """A short guess at what a file that no adapter recognises actually is."""
    if path.is_dir():
        listing = sorted(p.name for p in path.iterdir())[:8]
        return f"a directory that no format recognises (contains: {', '.join(listing) or 'nothing'})"
    try:
        head = read_head(path, 200, strict=True)
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc}); check its permissions"
    if not head:
        return "an empty file"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself; fetch the real file with `git lfs pull`"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive that is not a PyTorch checkpoint"
    if head[:1] == b"\x80":
        return "a Python pickle that is not a PyTorch checkpoint"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return "an HTML page (a failed download?)"
    return "not a format modelport recognises"


__all__ = ["Format", "Options", "ReadOptions", "SourceFile", "TensorInfo", "WriteOptions", "WriteResult", "TensorSource", "all_formats", "detect", "for_suffix", "get", "open", "register"]
