"""modelport: convert neural-network models between formats and prove the conversion correct."""

from __future__ import annotations

import sys as _sys

from ._version import __version__


def _running_as_command() -> bool:
    """True when this process is the ``modelport`` command (script or ``python -m modelport``)."""
    argv = getattr(_sys, "orig_argv", None) or []
    script = _sys.argv[0].rsplit("/", 1)[-1] if _sys.argv else ""
    return script == "modelport" or any(a == "-m" and b == "modelport" for a, b in zip(argv, argv[1:]))


if _running_as_command():    # before the imports below: Ctrl-C while they load is an exit 130 too
    import signal as _signal

    # held back while the handler's own module loads (a signal then would be a traceback), delivered after
    _mask = getattr(_signal, "pthread_sigmask", None)        # POSIX only
    _held = _mask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM}) if _mask else None
    try:
        from .atomic.interrupt import install_early as _install_early

        _install_early("modelport: interrupted; nothing was written")
    finally:
        if _mask:
            _mask(_signal.SIG_SETMASK, _held)

from .errors import ModelportError  # noqa: E402

# The facade's other names are resolved on first use, so `import modelport` (and the command's --help)
# loads neither torch nor the conversion and parity machinery. batch, convert, diff, inspect and parity are also
# the names of submodules: the import system binds a submodule to its package's attribute once it is
# imported, so these five are properties of the package that always give the function.
_LAZY = {"Options": (".formats", "Options"), "open": (".models.sources", "open_source"),
         "convert": (".convert", "convert"), "diff": (".diff", "diff"), "inspect": (".inspect", "inspect"),
         "parity": (".parity", "parity"), "trusted_torchscript": (".formats.torchscript", "trusted_torchscript"),
         "batch": (".batch", "batch")}


def _resolve(name: str):
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module, __name__), attr)


def __getattr__(name: str):
    if name in _LAZY:
        return _resolve(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(type(_sys)):
    """modelport's module type: the five names shared by a function and a submodule are the functions."""


def _function_of(name: str) -> property:
    def setter(self, value) -> None:     # the import system binding the submodule: sys.modules keeps it
        pass

    return property(lambda self: _resolve(name), setter)


for _name in ("batch", "convert", "diff", "inspect", "parity"):
    setattr(_Package, _name, _function_of(_name))
_sys.modules[__name__].__class__ = _Package


def load_model(path, arch=None, device="cpu", dtype=None, **kwargs):
    """A runnable eval-mode model for a checkpoint (imports torch).

    ``config=`` (a config.json path or dict) states the hyper-parameters of bare weights; without it,
    values the weights cannot reveal (head counts, norm epsilon, rope theta …) raise ConfigNeededError
    naming them, unless ``assume_config=True`` accepts guesses. See :func:`modelport.models.loader.load_model`.
    """
    from .models.loader import load_model as _load_model

    return _load_model(path, arch, device, dtype, **kwargs)


__all__ = ["ModelportError", "Options", "batch", "convert", "diff", "inspect", "load_model", "open", "parity",
           "trusted_torchscript", "__version__"]
