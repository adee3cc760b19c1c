"""Opening a checkpoint with what the model families know added: the config.json that a layout's own
config file implies (a Meta checkpoint's ``params.json``, through the codec on the family's layout), and
a config file given by the user (config.json, or a layout's own such as params.json)."""

from __future__ import annotations

from pathlib import Path

from .. import formats
from ..errors import FormatError
from ..formats._untrusted import read_json_file
from ..formats.base import Options, ReadOptions, TensorSource
from . import families
from .family import Layout


def open_source(path, format: str | None = None, options: Options | ReadOptions | None = None) -> TensorSource:  # noqa: A002
    """:func:`modelport.formats.open`, and for a checkpoint whose format holds a config file of its own
    (a Meta checkpoint's ``params.json``) its ``config``: a config.json dict translated from that file."""
    source = formats.open(path, format, options)
    found = native_config(source)
    if source.config is None and found is not None:
        layout, native = found
        try:
            source.config = layout.config.config_of(native, source, Path(source.path) / layout.config.file).to_hf_config()
            _carried_config(source, layout)
        except BaseException:
            source.close()
            raise
    return source


def native_config(source: TensorSource, beside: bool = False) -> tuple[Layout, dict] | None:
    """(the layout, its config file) when ``source`` holds a config file in a layout's own spelling (Meta's
    params.json, read by its format), or with ``beside`` when one lies beside its weights (a Meta shard
    opened as a plain .pth); None otherwise."""
    held = source.native_config
    layouts = families.config_layouts()
    for layout in layouts:
        if held is not None and held[0] == layout.config.file:
            return layout, held[1]
    if not beside:
        return None
    path = Path(source.path)
    for layout in layouts:
        candidate = path / layout.config.file if path.is_dir() else path.parent / layout.config.file
        if candidate.is_file():
            return layout, layout.config.check(read_json_file(candidate, layout.config.file), candidate)
    return None


def _carried_config(source: TensorSource, layout: Layout) -> None:
    """The config.json a checkpoint of ``layout`` was written from (Meta's ``hf_config.json``, beside
    params.json), when it describes the same model: it holds what params.json cannot (token ids, max
    positions …)."""
    from dataclasses import replace

    from ..errors import LayoutError, UnsupportedError
    from .config import config_from_hf

    if layout.config.carried is None:
        return
    carried = Path(source.path) / layout.config.carried
    if not carried.is_file():
        return
    try:
        stored = read_json_file(carried, "config file")
        if not isinstance(stored, dict):
            raise FormatError(f"{carried}: not a JSON object")
        same = replace(config_from_hf(stored, layout.family, str(carried)), max_positions=0) == \
            replace(config_from_hf(source.config, layout.family, f"{source.path}: {layout.config.file}"), max_positions=0)
    except (OSError, ValueError, FormatError, UnsupportedError, LayoutError) as exc:
        source.notes.append(f"{layout.config.carried} ignored: {exc}")
        return
    if same:
        source.config = stored
    else:
        source.notes.append(f"{layout.config.carried} ignored: it describes another model than {layout.config.file} "
                            "(edited since?)")


def read_config_file(path, source: TensorSource | None = None) -> dict:
    """A config file given with ``--config``: a config.json dict, or a layout's own config file (Meta's
    params.json) translated to one (what it leaves out, such as the vocabulary and tying, read from
    ``source``). A FormatError when it cannot be read."""
    path = Path(path)
    config = read_json_file(path, "config file")     # a regular file, plain JSON (depth, numbers, strings checked)
    if not isinstance(config, dict):
        raise FormatError(f"{path}: the config file holds {type(config).__name__}, not a JSON object")
    layout = next((lay for lay in families.config_layouts() if lay.config.is_native(config)), None)
    if layout is not None and source is not None:
        return layout.config.config_of(config, source, path).to_hf_config()
    return config
