"""What a runnable model is asked for and what it takes, below everything that builds one.

:class:`LoadSpec` is the one description of how to load a model to run (architecture, config, input
shape and dtype, engine, device, dtype …), shared by :func:`~modelport.models.runnable.load_runnable`,
the exporters, parity, ``inspect --run`` and ``verify`` instead of the same keyword arguments threaded
through each. :class:`InputSpec` describes one input of a runnable model. The small torch helpers every
maker of runnables uses (:func:`torch_dtype`, :func:`random_tensor`) live here too, so the makers
(:mod:`.graph`, :mod:`.hf_auto`, :mod:`.loader`, :mod:`.lua`) import nothing from each other or from
:mod:`.runnable`, which dispatches to them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import dtypes
from ..errors import UnsupportedError

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
TENSOR = "tensor"

BATCH, SEQUENCE = "batch", "sequence"

ENGINES = ("auto", "reference", "transformers")


@dataclass(frozen=True)
class LoadSpec:
    """How to build a runnable model from a path. Frozen: a caller's spec is never changed; use
    :meth:`replace` for a variant (the exporter's device and dtype, a candidate's format)."""

    arch: str | None = None            # a family id, or package.module:factory for your own module
    config: Any = None                 # config.json path or dict: the model's hyper-parameters
    assume_config: bool = False        # accept values bare weights cannot reveal (else ConfigNeededError)
    input_shape: Any = None            # tensor models: example input shape ("1,3,32,32" or a tuple)
    input_dtype: Any = None            # tensor models: example input dtype (default float32)
    engine: str = "auto"               # who runs a Hugging Face directory: auto | reference | transformers
    device: str = "cpu"
    dtype: Any = None                  # cast floating weights (float32, float16, bfloat16; None: as stored)
    format: str | None = None          # read the path as this format (None: detected)
    trust_torchscript: bool | None = None   # run TorchScript code the checker refuses (None: the context's)

    def replace(self, **changes) -> "LoadSpec":
        return dataclasses.replace(self, **changes)

    @property
    def user_module(self) -> bool:
        """Whether ``arch`` names your own module (``package.module:factory``)."""
        return bool(self.arch) and ":" in self.arch

    @classmethod
    def of(cls, spec: "LoadSpec | None" = None, **kwargs) -> "LoadSpec":
        """``spec`` with ``kwargs`` (the keyword form of older call sites) laid over it."""
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unexpected load option(s): {', '.join(unknown)}")
        base = spec if spec is not None else cls()
        return base.replace(**kwargs) if kwargs else base


@dataclass(frozen=True)
class InputSpec:
    """One input: its name, canonical dtype name (see :mod:`modelport.dtypes`) and shape, where an
    int is a fixed size and a string names a dynamic axis (``batch``, ``sequence``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    values: tuple[int, int] | None = None   # valid values (low, high excluded) of an index input

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


def token_inputs(names=("input_ids", "attention_mask")) -> tuple[InputSpec, ...]:
    return tuple(InputSpec(n, "int64", (BATCH, SEQUENCE)) for n in names)


def tensor_input(input_shape, input_dtype=None) -> InputSpec:
    """The one input of a ``tensor`` model from ``--input-shape`` / ``--input-dtype``."""
    from .user import parse_input_dtype, parse_input_shape

    return InputSpec("input", dtypes.canonical(parse_input_dtype(input_dtype)), parse_input_shape(input_shape))


def tensor_inputs(input_shape, input_dtype=None) -> tuple[InputSpec, ...]:
    """The inputs of a ``tensor`` model: one per shape of ``input_shape`` (one shape, or a list of them:
    ``--input-shape`` given once per input), named ``input`` when there is one, else ``input1`` …"""
    from .user import parse_input_dtype, parse_input_shapes

    shapes = parse_input_shapes(input_shape)
    dtype = dtypes.canonical(parse_input_dtype(input_dtype))
    names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(1, len(shapes) + 1)]
    return tuple(InputSpec(n, dtype, shape) for n, shape in zip(names, shapes))


def output_names(n: int) -> tuple[str, ...]:
    """``output`` for one output, ``output1`` … for several."""
    return ("output",) if n == 1 else tuple(f"output{i}" for i in range(1, n + 1))


def torch_dtype(dtype):
    """The torch dtype to run a model in (None: as stored); a non-floating one is refused."""
    if dtype is None:
        return None
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtypes.canonical(dtype)
    if name not in dtypes.FLOATING:
        raise UnsupportedError(f"dtype {dtype!r} cannot run a model; use one of {', '.join(sorted(dtypes.FLOATING))}")
    return dtypes.to_torch(name)


def random_tensor(shape, dtype, gen, values: tuple[int, int] | None = None):
    """Seeded values of ``shape`` and torch ``dtype``: normal floats, random bools, small integers;
    whole numbers in ``values`` (low, high excluded) when given, as indices into a table are."""
    import torch

    if values is not None:
        return torch.randint(values[0], values[1], shape, generator=gen, dtype=torch.int64).to(dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(0, 10, shape, generator=gen, dtype=torch.int64).to(dtype)


__all__ = ["BATCH", "CAUSAL_LM", "ENCODER", "ENGINES", "SEQUENCE", "TENSOR", "InputSpec", "LoadSpec", "random_tensor",
           "output_names", "tensor_input", "tensor_inputs", "token_inputs", "torch_dtype"]
