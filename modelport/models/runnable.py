"""One notion of a model that runs, whatever produced it, and :func:`load_runnable`, which makes one.

Every producer (a reference family, a user module, a Lua ``nn`` model, and the graph formats) returns
a :class:`Runnable` (see :mod:`.runners`); every consumer (``inspect --run``, the exporters, the parity
checker) takes one. A runnable says what it takes (:class:`InputSpec` per input: name, dtype, shape
with named dynamic axes), what it returns (output names), where it came from, and on which device it
really runs; its ``run(feeds)`` maps input names to tensors and returns output names to tensors.

Three kinds of model:

- ``causal-lm``: ``input_ids`` and ``attention_mask`` (int64, ``batch`` × ``sequence``) → ``logits``
  (``batch`` × ``sequence`` × vocab);
- ``encoder``: the inputs its tokenizer gives (``input_ids``, ``attention_mask``, maybe
  ``token_type_ids``) → its first output (``last_hidden_state``);
- ``tensor``: anything else (Lua ``nn``, user modules): one input of a fixed shape and dtype
  (``--input-shape`` / ``--input-dtype``) → ``output``; an nngraph gModule of several inputs takes
  ``input1`` … ``inputN`` (``--input-shape`` once per input, in Lua's order) and returns ``output1`` …
  ``outputM`` when it has several outputs.

Which runnable a file makes is decided by its format: one maker per format id, registered in
:data:`MAKERS` (:func:`register_maker`); formats without one (the weight formats) are loaded into a
reference family or your own module (:func:`.loader.make_weights`). How to load is one
:class:`LoadSpec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .runners import (OrtRunnable, Runnable, TorchRunnable, check_memory, example_feeds, feed_bytes,  # noqa: F401
                      first_outputs, from_module, is_ort_error, memory_budget, ort_message, ort_session,
                      position_limit, run_example)
from .spec import (BATCH, CAUSAL_LM, ENCODER, SEQUENCE, TENSOR, InputSpec, LoadSpec, random_tensor,  # noqa: F401
                   tensor_input, token_inputs)

Maker = Callable[[Path, LoadSpec], Runnable]
MAKERS: dict[str, Maker] = {}


def register_maker(format_id: str, maker: Maker) -> None:
    """Make runnables of format ``format_id`` with ``maker(path, spec)`` (``spec.format`` is the format's id)."""
    if format_id in MAKERS:
        raise ValueError(f"a runnable maker for format {format_id!r} is already registered")
    MAKERS[format_id] = maker


def _makers() -> dict[str, Maker]:
    if not MAKERS:
        from . import graph, hf_auto, lua

        register_maker("torchscript", graph.make_torchscript)
        register_maker("onnx", graph.make_onnx)
        register_maker("hf", hf_auto.make_hf)
        register_maker("t7", lua.make_t7)
    return MAKERS


def lua_input(model, spec: InputSpec, path, input_dtype=None) -> InputSpec:
    """See :func:`.lua.lua_input`."""
    from .lua import lua_input as _lua_input

    return _lua_input(model, spec, path, input_dtype)


def load_runnable(path, spec: LoadSpec | None = None, **kwargs) -> Runnable:
    """The runnable model held by ``path``: a TorchScript archive, an ONNX graph (onnxruntime), a Lua
    ``nn`` model from ``.t7``, a user module (``arch="package.module:factory"``), a Hugging Face directory
    run by transformers, or a reference family (detected, or ``arch``; ``assume_config`` accepts the
    values bare weights cannot reveal).

    ``spec`` (a :class:`LoadSpec`) says how; the keyword form (``arch=``, ``config=``, ``device=``,
    ``dtype=``, ``input_shape=``, ``input_dtype=``, ``format=``, ``engine=``, ``assume_config=``,
    ``trust_torchscript=``) sets the same fields, over ``spec`` when both are given.

    ``engine`` chooses who runs a Hugging Face directory: ``reference`` (modelport's family), ``transformers``
    (its Auto classes, any architecture), or ``auto``: the reference when it knows the family, transformers
    otherwise. ``origin`` says which ran; ``made_by`` says it as a fixed word.

    A TorchScript archive runs its own code: it is refused when that code could do more than compute
    (define ``__setstate__``, call file or storage-mapping operators …) unless ``trust_torchscript``
    (default: whether inside :func:`modelport.trusted_torchscript`)."""
    from .. import formats

    spec = LoadSpec.of(spec, **kwargs)
    path = Path(path)
    fmt = formats.get(spec.format) if spec.format else formats.detect(path)
    maker = _makers().get(fmt.id)
    if maker is None:
        from .loader import make_weights as maker
    return maker(path, spec.replace(format=fmt.id))


__all__ = ["BATCH", "CAUSAL_LM", "ENCODER", "MAKERS", "SEQUENCE", "TENSOR", "InputSpec", "LoadSpec", "OrtRunnable",
           "Runnable", "TorchRunnable", "check_memory", "example_feeds", "feed_bytes", "first_outputs", "from_module", "load_runnable", "lua_input",
           "is_ort_error", "memory_budget", "ort_message", "ort_session", "position_limit", "random_tensor",
           "register_maker", "run_example", "tensor_input", "token_inputs"]
