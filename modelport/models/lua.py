"""Runnables from Torch7 files holding a Lua ``nn`` model, rebuilt as a ``torch.nn.Module``."""

from __future__ import annotations

from pathlib import Path

from .. import dtypes
from ..errors import UnsupportedError
from .runners import TorchRunnable, from_module
from .spec import TENSOR, InputSpec, LoadSpec, output_names, tensor_inputs, torch_dtype


def lua_input(model, spec: InputSpec, path, input_dtype=None) -> InputSpec:
    """The example input of a rebuilt Lua model: ``spec``'s shape, the model's own floating type (or
    int64 indices 1..n when its input feeds a ``LookupTable``) unless ``input_dtype`` was given."""
    from ..t7.nn import example_input, input_count

    n = input_count(model)
    if n != 1:
        raise UnsupportedError(f"{path}: this nngraph gModule takes {n} inputs; modelport runs and exports Lua models "
                               "of one input (--input-shape gives one)")
    own, values = example_input(model)
    return InputSpec(spec.name, spec.dtype if input_dtype else dtypes.canonical(own), spec.shape, values)


def lua_inputs(model, specs: tuple[InputSpec, ...], path, input_dtype=None) -> tuple[InputSpec, ...]:
    """The example inputs of a rebuilt Lua model, one per input it takes (an nngraph gModule may take
    several: ``--input-shape`` once per input, in Lua's order), each of the model's own floating type
    unless ``input_dtype`` was given; a model of one input as :func:`lua_input` makes it."""
    from ..t7.nn import input_count

    n = input_count(model)
    if len(specs) != n:
        given = f"{len(specs)} shape{'s' * (len(specs) != 1)}"
        if n == 1:
            raise UnsupportedError(f"{path}: this model takes one input and --input-shape gave {given}; give it once")
        raise UnsupportedError(f"{path}: this nngraph gModule takes {n} inputs and --input-shape gave {given}; "
                               f"give --input-shape once per input ({n} times), in the order of the gModule's inputs")
    if n == 1:
        return (lua_input(model, specs[0], path, input_dtype),)
    own = _floating_type(model)
    return tuple(InputSpec(s.name, s.dtype if input_dtype else dtypes.canonical(own), s.shape) for s in specs)


def _floating_type(model):
    """The floating type a model computes in: its first floating parameter's or buffer's, else float32."""
    import torch

    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def make_t7(path: Path, spec: LoadSpec) -> TorchRunnable:
    """A ``.t7`` file: its Lua ``nn`` model, or, with ``arch``, its weights in that architecture."""
    if spec.arch is not None:
        from .loader import make_weights

        return make_weights(path, spec)
    if spec.engine == "transformers":
        raise UnsupportedError(f"{path}: --engine transformers runs Hugging Face directories; this is {spec.format!r}")
    from ..t7.nn import load_lua_model

    if spec.input_shape is None:
        raise UnsupportedError(f"{path}: running a Lua nn model needs an example input: pass --input-shape, "
                               "e.g. 1,3,32,32")
    given = tensor_inputs(spec.input_shape, spec.input_dtype)
    model = load_lua_model(path)
    if spec.dtype is not None:
        model.to(torch_dtype(spec.dtype))
    model.to(spec.device)
    given = lua_inputs(model, given, path, spec.input_dtype)
    return from_module(model, kind=TENSOR, origin=f"Lua nn model rebuilt as {type(model).__name__}", path=path,
                       input_specs=given, outputs=output_names(int(getattr(model, "n_outputs", 1))), made_by="lua")
