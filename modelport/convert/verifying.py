"""The two sides of a checked conversion (``convert --verify``, ``modelport verify``) as the parity check loads
them: one at a time, the source run as ``modelport parity`` runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import formats
from ..models.spec import LoadSpec


@dataclass(frozen=True)
class VerifySource:
    """The source of a checked conversion, as the parity check loads it (``deferred``: when needed, released
    after) and the config that weights written without one run with (``config``)."""
    deferred: Any
    config: Any

    def candidate(self, written: Path, fmt: str):
        """The written model as parity loads it: a graph as it is; weights with the source's architecture and
        config (its config.json or params.json, not a guess, so a weights-only output needs no --config)."""
        from ..parity import Deferred

        if formats.get(fmt).graph:
            return Deferred(written, LoadSpec(format=fmt))
        return Deferred(written, LoadSpec(format=fmt, arch=self.deferred.spec.arch, config=self.config))


def verify_source(src: Path, load: LoadSpec, loaded: bool = True) -> VerifySource:
    """How ``convert --verify`` and ``modelport verify`` run the source: as ``modelport parity`` would (a Hugging
    Face directory in transformers when it is installed, with its config.json for bare weights written from it).
    Otherwise, with ``loaded``, what the source runs as is settled now, before anything is written (a source that
    cannot run cannot be verified: an input error, found first), and its config is kept for the output: weights
    of a built-in family are planned without building the model or reading a weight (the conversion reads them
    all); anything else is built once and released. The models are then loaded one at a time by the check
    itself, never held side by side."""
    from ..parity import Deferred, reference_engine

    load = load.replace(engine=reference_engine(src, load.engine, load.arch))
    if load.engine == "transformers":       # a Hugging Face directory: its config.json says it all
        return VerifySource(Deferred(src, load.replace(config=None)), src / "config.json")
    if not loaded:
        return VerifySource(Deferred(src, load), load.config)
    from ..models.runnable import _makers, load_runnable

    fmt = load.format or formats.detect(src).id
    if fmt not in _makers() and not load.user_module:      # weights of a built-in family (loader.make_weights)
        from ..models.loader import planned_config

        return VerifySource(Deferred(src, load), planned_config(src, load.replace(format=fmt)))
    from ..parity.reference import release

    r = load_runnable(src, load)
    to_hf = getattr(getattr(r.module, "config", None), "to_hf_config", None)
    config = to_hf() if to_hf is not None else load.config
    del r, to_hf
    release()
    return VerifySource(Deferred(src, load), config)
