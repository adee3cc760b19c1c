"""Opening a checkpoint with what the model families know added: the config a Meta checkpoint's
``params.json`` implies, and a config file given by the user (config.json or params.json)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import formats
from ..errors import FormatError
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
        except BaseException:
            source.close()
            raise
    return source


def read_config_file(path, source: TensorSource | None = None) -> dict:
    """A config file given with ``--config``: a config.json dict, or a Meta params.json translated to
    one (its vocabulary and tying read from ``source``). A FormatError when it cannot be read."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: cannot read the config file ({exc})") from exc
    if llama.is_params(config) and source is not None:
        return llama.hf_config_from_meta_source(config, source, path)
    return config
