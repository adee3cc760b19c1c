"""Reference architectures and the knowledge of which weights belong to which family.

Importing the package loads no torch, so the CLI may import it at start-up. The reference models
(``gpt2``, ``llama``, ``gptneox`` and their ``_common``) import torch at the top; every other module here
imports them, and torch, inside the functions that build or run a model.
"""

from __future__ import annotations

from ..formats.base import TensorSource
from .config import ASSUMED_KEY, known_archs, normalize_arch


def infer_config(source: TensorSource, arch: str | None = None, assume_config: bool = False) -> dict | None:
    """An HF ``config.json`` for ``source`` inferred from tensor names and shapes, or None.

    Values that weights cannot reveal (head count, norm epsilon, rope_theta, rotary fraction,
    max positions …) are filled with the defaults in each family's ``assumed_defaults``
    and their config.json keys listed under ``"_modelport_assumed"``; a writer prints that list and
    drops the key. Every tensor's shape is checked against the inferred config (LayoutError otherwise).
    Unless ``assume_config``, guesses that change the model's outputs raise ConfigNeededError listing them.
    """
    from .detect import infer_model_config
    from .loader import plan_names

    if arch is not None and ":" in arch:
        return None             # a user module: its config is the user's --config
    cfg = infer_model_config(source, normalize_arch(arch) if arch else None)
    if cfg is None:
        return None
    if not assume_config:      # refused before the shape check, which builds a model (torch)
        from .config import refuse_guesses

        refuse_guesses(cfg.to_hf_config(), f"{source.path}: writing a config.json from bare weights")
    plan_names(source, cfg)
    return cfg.to_hf_config()


def detect_arch(source: TensorSource) -> str | None:
    """The architecture family of ``source`` (a family id), or None when unknown."""
    from .detect import detect_family

    return detect_family(source)


def load_model(path, arch: str | None = None, device="cpu", dtype=None, **kwargs):
    """A runnable model for ``path``; see :func:`modelport.models.loader.load_model`."""
    from .loader import load_model as _load

    return _load(path, arch, device, dtype, **kwargs)


__all__ = ["ASSUMED_KEY", "detect_arch", "infer_config", "known_archs", "load_model"]
