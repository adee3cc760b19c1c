"""Your own ``nn.Module``: ``--arch package.module:factory [--config file.json]``.

The factory is your code, imported and called as you name it (modelport runs it; it never runs code
found inside a weights file). It is called with the config's keys as keyword arguments, or with no
arguments when there is no config, and must return an ``nn.Module``. The weights are then loaded
strictly: a name the module lacks or a parameter the file lacks is an error listing them.
Modules that take something other than token ids say so with ``input_shape`` (``1,3,224,224``)
and ``input_dtype`` (``float32`` by default); :func:`modelport.models.loader.example_inputs` builds
inputs from them.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from .. import dtypes
from ..errors import LayoutError, UnsupportedError
from ..formats.base import TensorSource
from .strict import key_mismatch


def import_factory(spec: str):
    """The callable named by ``package.module:factory`` (``factory`` may be dotted: ``Class.build``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UnsupportedError(f"--arch {spec!r}: a user module is given as package.module:factory")
    cwd = str(Path.cwd())
    added = cwd not in sys.path       # `python -m` puts the working directory first; do the same, for the import only
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UnsupportedError(f"--arch {spec!r}: cannot import module {module_name!r} ({exc}); run from the "
                                   "directory that holds it or add that directory to PYTHONPATH") from exc
        raise
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnsupportedError(f"--arch {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnsupportedError(f"--arch {spec!r}: {attr!r} is not callable")
    return obj


def build_user_module(spec: str, config: dict | None = None):
    """Call the factory with ``config`` as keyword arguments (no arguments without one)."""
    import torch

    factory = import_factory(spec)
    kwargs = dict(config or {})
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise LayoutError(f"--arch {spec!r}: the factory does not accept the config given ({exc}); "
                          f"config keys: {sorted(kwargs) or 'none'}") from exc
    except ValueError:
        pass                          # no signature to check (a builtin): let the call speak
    module = factory(**kwargs)
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedError(f"--arch {spec!r}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def parse_input_shapes(value) -> list[tuple[int, ...]]:
    """The shape of each input: ``value`` is one shape (``"1,3,224,224"``, ``"1x3x224x224"`` or a tuple of
    ints) or a list of them, one per input in the model's order (``--input-shape`` given once per input)."""
    if isinstance(value, (tuple, list)) and value and not all(isinstance(d, int) for d in value):
        return [parse_input_shape(v) for v in value]
    return [parse_input_shape(value)]


def parse_input_shape(text) -> tuple[int, ...]:
    if isinstance(text, (tuple, list)) and text and not all(isinstance(d, int) for d in text):
        raise UnsupportedError(f"--input-shape is given {len(text)} times, and this model takes one input: give it "
                               "once")
    if isinstance(text, (tuple, list)):
        dims = list(text)
    else:
        try:
            dims = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
        except ValueError:
            raise UnsupportedError(f"--input-shape {text!r}: give positive integers separated by commas, e.g. 1,3,224,224") from None
    if not dims or any(not isinstance(d, int) or d <= 0 for d in dims):
        raise UnsupportedError(f"--input-shape {text!r}: give positive integers separated by commas, e.g. 1,3,224,224")
    return tuple(dims)


def parse_input_dtype(name):
    import torch

    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    canon = dtypes.canonical(name)
    if canon not in dtypes.DTYPES:
        raise UnsupportedError(f"--input-dtype {name!r}: unknown; known: {', '.join(dtypes.DTYPES)}")
    return dtypes.to_torch(canon)


def load_user_model(spec: str, source: TensorSource, config: dict | None, device="cpu", dtype=None,
                    input_shape=None, input_dtype=None):
    """Build the user's module, load ``source`` into it strictly, and return it in eval mode."""

    if input_dtype is not None and input_shape is None:
        raise UnsupportedError("--input-dtype needs --input-shape")
    example = (parse_input_shape(input_shape), parse_input_dtype(input_dtype)) if input_shape is not None else None
    module = build_user_module(spec, config)
    expected = module.state_dict(keep_vars=True)
    aliases = source.aliases()
    names = list(source.names()) + list(aliases)
    missing = [n for n in expected if n not in names]
    unexpected = [n for n in names if n not in expected]
    if missing or unexpected:
        raise LayoutError(f"{source.path}: the weights do not fit {spec} ({key_mismatch(missing, unexpected)})")
    state = {}
    for name, target in expected.items():
        have = tuple(source.info(aliases.get(name, name)).shape)
        if have != tuple(target.shape):
            raise LayoutError(f"{source.path}: tensor {name!r} has shape {list(have)}, {spec} needs {list(target.shape)}")
        t = source.read(name)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t
    if dtype is not None:
        module.to(dtype)              # floating parameters and buffers only
    module.load_state_dict(state, strict=True)
    module.to(device)
    module.eval()
    if example is not None:
        module.modelport_input = example
    module.modelport_arch = spec
    module.modelport_assumed = []
    return module


__all__ = ["build_user_module", "import_factory", "load_user_model", "parse_input_dtype", "parse_input_shape",
           "parse_input_shapes"]
