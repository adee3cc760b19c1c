"""modelport: convert neural-network models between formats and prove the conversion correct."""

from __future__ import annotations

import sys as _sys

__version__ = "0.1.0"


def _running_as_command() -> bool:
    """True when this process is the ``modelport`` command (script or ``python -m modelport``)."""
    argv = getattr(_sys, "orig_argv", None) or []
    script = _sys.argv[0].rsplit("/", 1)[-1] if _sys.argv else ""
    return script == "modelport" or any(a == "-m" and b == "modelport" for a, b in zip(argv, argv[1:]))


if _running_as_command():    # before the imports below: Ctrl-C while they load is an exit 130 too
    from .atomic.interrupt import install_early as _install_early

    _install_early("modelport: interrupted; nothing was written")

from .errors import ModelportError  # noqa: E402
from .formats import Options  # noqa: E402
from .models.sources import open_source as open  # noqa: E402,A001
from .convert import convert  # noqa: E402  (the function; rebinds the subpackage's name)
from .diff import diff  # noqa: E402
from .inspect import inspect  # noqa: E402
from .parity import parity  # noqa: E402  (the function; rebinds the subpackage's name)
from .batch import batch  # noqa: E402  (the function; rebinds the subpackage's name)


def load_model(path, arch=None, device="cpu", dtype=None, **kwargs):
    """A runnable eval-mode model for a checkpoint (imports torch).

    ``config=`` (a config.json path or dict) states the hyper-parameters of bare weights; without it,
    values the weights cannot reveal (head counts, norm epsilon, rope theta …) raise ConfigNeededError
    naming them, unless ``assume_config=True`` accepts guesses. See :func:`modelport.models.loader.load_model`.
    """
    from .models.loader import load_model as _load_model

    return _load_model(path, arch, device, dtype, **kwargs)


__all__ = ["ModelportError", "Options", "batch", "convert", "diff", "inspect", "load_model", "open", "parity", "__version__"]
