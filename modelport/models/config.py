"""One config dataclass per architecture family, built at one boundary.

A config reaches modelport as a Hugging Face ``config.json`` (transformers 4.x or 5.x spelling) or as
Meta's ``params.json``. :func:`config_from_hf` builds the family's config dataclass (defined with the
family's record in :mod:`modelport.models.families`) from a config.json; everything downstream uses
the named dimensions (``n_layers, n_heads, n_kv_heads, head_dim, dim, ffn_dim, vocab_size``).

What the records build their configs from (the alias reader, the shared checks, ``RopeScaling``,
``from_record``) lies below them in :mod:`modelport.models.config_base`; this module picks the family
through the registry.

Each family has ONE alias table (in its record): field -> the config.json keys that spell it, newest
first. A dotted key reads inside a nested dict (``rope_parameters.rope_theta`` is how transformers 5.x writes what 4.x
wrote as top-level ``rope_theta``). When two spellings are present and disagree, the config is refused.

``to_hf_config()`` writes the transformers 4.x spelling by default, which transformers 4.x reads
natively and 5.x converts on load; ``to_hf_config(spelling=5)`` writes ``rope_parameters``.

Values that the source could not give (a bare state dict, a ``params.json`` without ``max_seq_len``)
are filled with the defaults stated on each field and listed in ``assumed`` (config.json keys); the HF
config dict carries that list as ``_modelport_assumed`` so a writer can print it and drop the key.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError, LayoutError, UnsupportedError
from .config_base import ASSUMED_KEY, NOT_MATH, RopeScaling, from_record  # noqa: F401  (importable from here too)


# -- the boundary ----------------------------------------------------------------------------------
def known_archs() -> list[str]:
    from .families import ids

    return ids()


def normalize_arch(arch: str) -> str:
    """The family id for an ``--arch`` spelling; an error listing the known ones otherwise."""
    from .families import normalize

    return normalize(arch)


def family_of_hf(config: dict, where: str = "config.json") -> str | None:
    """The family named by a config.json's ``architectures`` / ``model_type``, None when neither is known."""
    from .families import of_hf_config

    return of_hf_config(config, where)


def config_from_hf(config: dict, arch: str | None = None, where: str = "config.json"):
    """The family's config dataclass from a config.json dict (transformers 4.x or 5.x spelling)."""
    from . import families

    if not isinstance(config, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(config).__name__}")
    named = family_of_hf(config, where)
    fam = normalize_arch(arch) if arch else named
    if named is not None and fam != named:
        raise LayoutError(f"{where}: --arch {arch} contradicts the config, which is {named}; drop one")
    if fam is None:
        named = config.get("architectures") or config.get("model_type")
        raise UnsupportedError(f"{where}: unknown architecture {named!r}; known: {', '.join(known_archs())} "
                               "(pass --arch to choose one)")
    return from_record(families.get(fam), config, where)


def math_guesses(config: dict) -> dict[str, Any]:
    """{key: guessed value} for the assumed keys of an HF config dict that change the model's outputs."""
    return {k: config.get(k) for k in config.get(ASSUMED_KEY) or () if k not in NOT_MATH}


def refuse_guesses(config: dict, where: str, recorded: str = "in the output's metadata") -> None:
    """ConfigNeededError listing the values a config guessed that change the model's math, if any."""
    from ..errors import ConfigNeededError, opt

    guesses = math_guesses(config)
    if guesses:
        listed = ", ".join(f"{k} (would guess {v!r})" for k, v in guesses.items())
        raise ConfigNeededError(
            f"{where}: the weights do not reveal values that change the model's outputs: {listed}; pass "
            f"{opt('config', repr('config.json'), 'FILE')} stating them, or {opt('assume_config')} to accept the guesses "
            f"(they are then recorded {recorded})")


__all__ = ["ASSUMED_KEY", "NOT_MATH", "math_guesses", "refuse_guesses", "RopeScaling", "config_from_hf", "family_of_hf",
           "from_record", "known_archs", "normalize_arch"]
