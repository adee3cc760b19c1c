"""Opening a checkpoint with what the model families know added: the config a Meta checkpoint's
``params.json`` implies, and a config file given by the user (config.json or params.json)."""

from __future__ import annotations

from pathlib import Path

from .. import formats
from ..errors import FormatError
from ..formats._untrusted import read_json_file
from ..formats.base import Options, ReadOptions, TensorSource
from .families import llama


def open_source(path, format: str | None = None, options: Options | ReadOptions | None = None) -> TensorSource:  # noqa: A002
    """:func:`modelport.formats.open`, and for a Meta checkpoint its ``config`` (a config.json dict
    translated from ``params.json``)."""
    source = formats.open(path, format, options)
    params = getattr(source, "params", None)
    if source.config is None and isinstance(params, dict):
        try:
            source.config = llama.hf_config_from_meta_source(params, source, Path(source.path) / "params.json")
            _carried_config(source)
        except BaseException:
            source.close()
            raise
    return source


def _carried_config(source: TensorSource) -> None:
    """The config.json a Meta checkpoint was written from (``hf_config.json``, beside params.json), when it
    describes the same model: it holds what params.json cannot (token ids, max positions …)."""
    from dataclasses import replace

    from ..errors import LayoutError, UnsupportedError
    from ..formats.meta import HF_CONFIG
    from .config import config_from_hf

    carried = Path(source.path) / HF_CONFIG
    if not carried.is_file():
        return
    try:
        stored = read_json_file(carried, "config file")
        if not isinstance(stored, dict):
            raise FormatError(f"{carried}: not a JSON object")
        same = replace(config_from_hf(stored, "llama", str(carried)), max_positions=0) == \
            replace(config_from_hf(source.config, "llama", f"{source.path}: params.json"), max_positions=0)
    except (OSError, ValueError, FormatError, UnsupportedError, LayoutError) as exc:
        source.notes.append(f"{HF_CONFIG} ignored: {exc}")
        return
    if same:
        source.config = stored
    else:
        source.notes.append(f"{HF_CONFIG} ignored: it describes another model than params.json (edited since?)")


def read_config_file(path, source: TensorSource | None = None) -> dict:
    """A config file given with ``--config``: a config.json dict, or a Meta params.json translated to
    one (its vocabulary and tying read from ``source``). A FormatError when it cannot be read."""
    path = Path(path)
    config = read_json_file(path, "config file")     # a regular file, plain JSON (depth, numbers, strings checked)
    if not isinstance(config, dict):
        raise FormatError(f"{path}: the config file holds {type(config).__name__}, not a JSON object")
    if llama.is_params(config) and source is not None:
        return llama.hf_config_from_meta_source(config, source, path)
    return config
