"""Tensors held in memory as a :class:`TensorSource`: a state dict seen through the same interface
as a file, for the Python API (``convert``-style pipelines on a model's ``state_dict()``) and tests.

Not a format: nothing is registered, nothing is sniffed. torch is imported only by the methods
that touch tensor data; tensors on the meta device give names, shapes and dtypes without data.
"""

from __future__ import annotations

from pathlib import Path

from .base import TensorInfo, TensorSource


class StateDictSource(TensorSource):
    """``tensors`` (name -> torch.Tensor) as a lazy source; ``aliases`` maps tied names to kept ones."""

    format = "memory"

    def __init__(self, tensors: dict, path: str | Path = "<memory>", config: dict | None = None,
                 aliases: dict[str, str] | None = None, metadata: dict[str, str] | None = None):
        super().__init__(Path(path))
        self.tensors = dict(tensors)
        self.config = config
        self.metadata = dict(metadata or {})
        self._aliases = dict(aliases or {})

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        t = self.tensors[name]
        return TensorInfo(name, str(t.dtype).removeprefix("torch."), tuple(t.shape))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def read(self, name: str):
        """The tensor itself (not a copy): callers must not change it."""
        return self.tensors[self._canonical(name)]

    def read_bytes(self, name: str) -> bytes:
        import torch

        t = self.tensors[name].contiguous().reshape(-1)
        return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
