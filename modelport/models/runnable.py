"""One notion of a model that runs, whatever produced it.

Every producer (a reference family, a user module, a Lua ``nn`` model, and the graph formats) returns
a :class:`Runnable`; every consumer (``inspect --run``, the exporters, the parity checker) takes one.
A runnable says what it takes (:class:`InputSpec` per input: name, dtype, shape with named dynamic
axes), what it returns (output names), where it came from, and on which device it really runs; its
``run(feeds)`` maps input names to tensors and returns output names to tensors.

Three kinds of model:

- ``causal-lm``: ``input_ids`` and ``attention_mask`` (int64, ``batch`` × ``sequence``) → ``logits``
  (``batch`` × ``sequence`` × vocab);
- ``encoder``: the inputs its tokenizer gives (``input_ids``, ``attention_mask``, maybe
  ``token_type_ids``) → its first output (``last_hidden_state``);
- ``tensor``: anything else (Lua ``nn``, user modules): one input of a fixed shape and dtype
  (``--input-shape`` / ``--input-dtype``) → ``output``; an nngraph gModule of several inputs takes
  ``input1`` … ``inputN`` (``--input-shape`` once per input, in Lua's order) and returns ``output1`` …
  ``outputM`` when it has several outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
TENSOR = "tensor"

BATCH, SEQUENCE = "batch", "sequence"


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


@dataclass
class Runnable:
    """A model that runs. Subclasses implement :meth:`run` for one backend."""

    kind: str                           # CAUSAL_LM | ENCODER | TENSOR
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    origin: str                         # what was built, in words: "modelport reference llama", "Lua nn model" …
    path: Path | None = None            # the file or directory it came from
    backend: str = "torch"              # torch | torchscript | onnxruntime
    device: str = "cpu"                 # where it really runs ("cpu", "cuda:0")
    vocab_size: int | None = None       # causal-lm and encoder
    max_positions: int | None = None    # the longest sequence it takes, when known (its position table)
    assumed: list[str] = field(default_factory=list)  # config values the weights did not reveal, guessed
    config_from: str | None = None      # where its config came from when not from its own files
    module: Any = None                  # the nn.Module, ScriptModule or InferenceSession underneath

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What ran, for reports: origin, backend, device, inputs and outputs."""
        return {"origin": self.origin, "kind": self.kind, "backend": self.backend, "device": self.device,
                "path": str(self.path) if self.path else None,
                "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in self.inputs],
                "outputs": list(self.outputs)}


@dataclass
class TorchRunnable(Runnable):
    """An eager ``torch.nn.Module`` (or a TorchScript module) called with the inputs in spec order."""

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        args = [feeds[spec.name].to(self.device) for spec in self.inputs]
        with torch.no_grad():
            if self.backend != "torchscript":
                out = self.module(*args)
            else:
                try:                   # the archive's own program: its failures are the file's
                    out = self.module(*args)
                except RuntimeError as exc:
                    from ..errors import one_line

                    raise FormatError(f"{self.path or self.origin}: the TorchScript module failed "
                                      f"({one_line(exc)})") from exc
        return dict(zip(self.outputs, _first_outputs(out, len(self.outputs))))

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass
class OrtRunnable(Runnable):
    """An ONNX graph in an onnxruntime session (``module``); ``device`` names the providers that really run."""

    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ()     # the execution providers the session really uses, first preferred
    # a graph with a key/value cache: its past inputs (name, dtype, kv heads, head size), fed empty, and
    # its position_ids, fed as the reference models count them from the mask
    cache: tuple[tuple[str, str, int, int], ...] = ()
    positions: bool = False

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        try:
            values = self.module.run(list(self.outputs), self.arrays(feeds))
        except Exception as exc:  # noqa: BLE001 - see is_ort_error
            if not is_ort_error(exc):
                raise
            raise FormatError(f"{self.path or self.origin}: onnxruntime failed running the graph "
                              f"({ort_message(exc)})") from exc
        return {name: torch.from_numpy(v) for name, v in zip(self.outputs, values)}

    def arrays(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The session's feeds (numpy) for ``feeds``: an empty cache and positions added where the graph takes them."""
        arrays = {spec.name: feeds[spec.name].cpu().numpy() for spec in self.inputs}
        if self.cache or self.positions:
            import numpy as np

            mask = arrays["attention_mask"]
            if self.positions:
                arrays["position_ids"] = np.maximum(mask.astype(np.int64).cumsum(-1) - 1, 0)
            for name, dtype, heads, head_dim in self.cache:
                arrays[name] = np.zeros((mask.shape[0], heads, 0, head_dim), dtype=dtype)
        return arrays

    @property
    def parameters(self) -> int:
        """Elements in the graph's initializers."""
        import math

        from ..formats.onnx import load_proto

        return sum(math.prod(t.dims) for t in load_proto(self.path).graph.initializer) if self.path else 0


def ort_session(path, device: str = "cpu"):
    """An onnxruntime session for the graph at ``path`` and the providers it really uses.

    ``device="cuda"`` asks for the CUDA execution provider first; whether it runs is read from the
    created session, never from what onnxruntime lists as available."""
    from ..runtime import import_onnxruntime, session_providers

    ort = import_onnxruntime()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # its provider-fallback notice is printed, not raised
            session = ort.InferenceSession(str(path), providers=[p for p in wanted if p in available])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's exception types have no common public base
        if not is_ort_error(exc):
            raise
        raise FormatError(f"{path}: onnxruntime cannot load the graph ({ort_message(exc)})") from exc
    return session, session_providers(session)


def is_ort_error(exc: BaseException) -> bool:
    """An exception onnxruntime raised about the graph or its inputs (its own types, or a message of the
    graph's bytes that is not UTF-8)."""
    return type(exc).__module__.startswith("onnxruntime") or isinstance(exc, (UnicodeDecodeError, RuntimeError))


def ort_message(exc: BaseException) -> str:
    """onnxruntime's message on one line; one it could not decode (node names that are not UTF-8) decoded
    with replacement characters."""
    from ..errors import one_line

    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return one_line(RuntimeError(exc.object.decode("utf-8", "replace")))
    return one_line(exc)


def _first_outputs(out, n: int) -> list:
    """The first ``n`` tensors of a module's output (a tensor, a tuple, or a transformers ModelOutput)."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if not isinstance(out, (list, tuple)):
        out = (out,)
    return list(out[:n])


def example_feeds(runnable: Runnable, batch: int = 1, seq_len: int = 8, seed: int = 0,
                  left_pad: int = 0) -> dict[str, Any]:
    """Seeded inputs for ``runnable``. Token models get ids spread over the whole vocabulary and a mask;
    ``left_pad`` > 0 pads the last row on the left by that many positions (mask 0, id 0), as a batch of
    prompts of different lengths is. Tensor models get values of their spec's shape and dtype; a dynamic
    axis takes ``batch`` (axis 0) or ``seq_len``."""
    import torch

    from .. import dtypes

    limit = position_limit(runnable)
    if runnable.kind in (CAUSAL_LM, ENCODER) and limit is not None and seq_len > limit:
        raise UnsupportedError(f"{runnable.path or runnable.origin}: a sequence of {seq_len} tokens is longer than "
                               f"the model's position table ({limit} positions); use at most {limit}")
    check_memory(feed_bytes(runnable, batch, seq_len), f"{runnable.path or runnable.origin}: inputs of batch {batch}"
                 + (f", sequence {seq_len}" if runnable.kind in (CAUSAL_LM, ENCODER) else
                    f", shapes {[list(i.shape) for i in runnable.inputs]}"), runnable.device)
    gen = torch.Generator().manual_seed(seed)
    feeds = {}
    if runnable.kind in (CAUSAL_LM, ENCODER):
        if runnable.vocab_size is None:
            raise UnsupportedError(f"{runnable.origin}: no vocabulary size known to make token inputs from")
        ids = torch.randint(0, runnable.vocab_size, (batch, seq_len), generator=gen)
        mask = torch.ones_like(ids)
        if left_pad:
            if left_pad >= seq_len:
                raise UnsupportedError(f"left padding {left_pad} leaves no token in a sequence of {seq_len}")
            ids[-1, :left_pad] = 0
            mask[-1, :left_pad] = 0
        for spec in runnable.inputs:
            feeds[spec.name] = {"input_ids": ids, "attention_mask": mask}.get(spec.name, torch.zeros_like(ids))
        return feeds
    for spec in runnable.inputs:
        shape = tuple(d if isinstance(d, int) else (batch if i == 0 else seq_len) for i, d in enumerate(spec.shape))
        feeds[spec.name] = random_tensor(shape, dtypes.to_torch(spec.dtype), gen, spec.values)
    return feeds


def run_example(runnable: Runnable, feeds: dict[str, Any], source=None) -> dict[str, Any]:
    """``runnable.run(feeds)``; a model that fails on its example input is an input the user chose
    (``--input-shape`` / ``--input-dtype``), so the failure is an :class:`UnsupportedError` naming it."""
    try:
        return runnable.run(feeds)
    except (RuntimeError, IndexError, TypeError, ValueError) as exc:
        shown = ", ".join(f"{i.name} {list(feeds[i.name].shape)} {i.dtype}" for i in runnable.inputs)
        raise UnsupportedError(f"{source or runnable.path}: {runnable.origin} fails on the example input ({shown}): "
                               f"{str(exc).splitlines()[0][:200]}; check --input-shape / --input-dtype") from exc


def position_limit(runnable: Runnable) -> int | None:
    """The longest sequence ``runnable`` takes: what its file records, else its config's position table."""
    if runnable.max_positions is not None:
        return runnable.max_positions
    module = getattr(runnable.module, "root", runnable.module)    # a wrapped transformers model: its own config
    cfg = getattr(module, "config", None)
    for key in ("max_positions", "n_positions", "max_position_embeddings"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def memory_budget(device: str = "cpu") -> int:
    """Bytes a run may count on: the memory the system reports available (a GPU's: its free memory)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**60 else f"2^{n.bit_length() - 1} bytes"


def check_memory(need: int, what: str, device: str = "cpu") -> None:
    """Refuse, before allocating, a step estimated to need more than half the memory available."""
    budget = memory_budget(device)
    if need > budget // 2:
        raise UnsupportedError(f"{what} would need about {_gib(need)} of memory, more than half of the "
                               f"{_gib(budget)} available; use smaller sizes")


def feed_bytes(runnable: Runnable, batch: int, seq_len: int) -> int:
    """Estimated bytes of one run's inputs and outputs, ``runnable``'s and a candidate's: token models keep
    ids, mask and float32 logits (batch x sequence x vocabulary) twice; tensor models their inputs thrice."""
    from .. import dtypes

    if runnable.kind in (CAUSAL_LM, ENCODER):
        return batch * seq_len * (16 + 8 * (runnable.vocab_size or 1))
    total = 0
    for spec in runnable.inputs:
        numel = 1
        for i, d in enumerate(spec.shape):
            numel *= d if isinstance(d, int) else (batch if i == 0 else seq_len)
        total += numel * (dtypes.DTYPES[spec.dtype].itemsize if spec.dtype in dtypes.DTYPES else 8)
    return 3 * total


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


def tensor_input(input_shape, input_dtype=None) -> InputSpec:
    """The one input of a ``tensor`` model from ``--input-shape`` / ``--input-dtype``."""
    from .. import dtypes
    from .user import parse_input_dtype, parse_input_shape

    return InputSpec("input", dtypes.canonical(parse_input_dtype(input_dtype)), parse_input_shape(input_shape))


def tensor_inputs(input_shape, input_dtype=None) -> tuple[InputSpec, ...]:
    """The inputs of a ``tensor`` model: one per shape of ``input_shape`` (one shape, or a list of them:
    ``--input-shape`` given once per input), named ``input`` when there is one, else ``input1`` …"""
    from .. import dtypes
    from .user import parse_input_dtype, parse_input_shapes

    shapes = parse_input_shapes(input_shape)
    dtype = dtypes.canonical(parse_input_dtype(input_dtype))
    names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(1, len(shapes) + 1)]
    return tuple(InputSpec(n, dtype, shape) for n, shape in zip(names, shapes))


def output_names(n: int) -> tuple[str, ...]:
    """``output`` for one output, ``output1`` … for several."""
    return ("output",) if n == 1 else tuple(f"output{i}" for i in range(1, n + 1))


def from_module(module, *, kind: str, origin: str, path=None, vocab_size=None, input_spec: InputSpec | None = None,
                assumed=(), input_specs: tuple[InputSpec, ...] | None = None,
                outputs: tuple[str, ...] | None = None) -> TorchRunnable:
    """Wrap an eager module: a language model (``kind`` causal-lm / encoder) or a tensor model with
    ``input_spec`` (or several ``input_specs``, and ``outputs`` named when it returns several)."""
    import torch

    device = str(next(iter(module.parameters()), torch.empty(0)).device)
    if kind == CAUSAL_LM:
        inputs, outputs = token_inputs(), ("logits",)
    elif kind == ENCODER:
        inputs, outputs = token_inputs(), ("last_hidden_state",)
    else:
        if input_spec is None and not input_specs:
            raise UnsupportedError(f"{path or origin}: running this model needs an example input: pass --input-shape, "
                                   "e.g. 1,3,32,32")
        inputs, outputs = tuple(input_specs or (input_spec,)), tuple(outputs or ("output",))
    return TorchRunnable(kind=kind, inputs=inputs, outputs=outputs, origin=origin, path=Path(path) if path else None,
                         device=device, vocab_size=vocab_size, assumed=list(assumed), module=module)


def lua_input(model, spec: InputSpec, path, input_dtype=None) -> InputSpec:
    """The example input of a rebuilt Lua model: ``spec``'s shape, the model's own floating type (or
    int64 indices 1..n when its input feeds a ``LookupTable``) unless ``input_dtype`` was given."""
    from .. import dtypes
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
    from .. import dtypes
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


def load_runnable(path, *, arch: str | None = None, config=None, device="cpu", dtype=None, input_shape=None,
                  input_dtype=None, format: str | None = None, engine: str = "auto",
                  assume_config: bool = False, trust_torchscript: bool | None = None) -> Runnable:  # noqa: A002
    """The runnable model held by ``path``: a TorchScript archive, an ONNX graph (onnxruntime), a Lua
    ``nn`` model from ``.t7``, a user module (``arch="package.module:factory"``), a Hugging Face directory
    run by transformers, or a reference family (detected, or ``arch``; ``assume_config`` accepts the
    values bare weights cannot reveal).

    ``engine`` chooses who runs a Hugging Face directory: ``reference`` (modelport's family), ``transformers``
    (its Auto classes, any architecture), or ``auto``: the reference when it knows the family, transformers
    otherwise. ``origin`` says which ran.

    A TorchScript archive runs its own code: it is refused when that code could do more than compute
    (define ``__setstate__``, call file or storage-mapping operators …) unless ``trust_torchscript``
    (default: whether inside :func:`modelport.trusted_torchscript`)."""
    from .. import formats

    path = Path(path)
    fmt = formats.get(format) if format else formats.detect(path)
    if fmt.id == "torchscript":
        from .graph import torchscript_runnable

        return torchscript_runnable(path, device=device, input_shape=input_shape, input_dtype=input_dtype,
                                    trust_torchscript=trust_torchscript)
    if fmt.id == "onnx":
        from .graph import onnx_runnable

        return onnx_runnable(path, device=device, input_shape=input_shape, input_dtype=input_dtype)
    if fmt.id == "hf" and config is None and not (arch and ":" in arch):
        from .hf_auto import choose_engine, transformers_runnable

        if choose_engine(path, engine, arch) == "transformers":
            return transformers_runnable(path, device=device, dtype=dtype)
    elif engine == "transformers":
        raise UnsupportedError(f"{path}: --engine transformers runs Hugging Face directories; this is {fmt.id!r}")
    if fmt.id == "t7" and arch is None:
        from ..t7.nn import load_lua_model

        if input_shape is None:
            raise UnsupportedError(f"{path}: running a Lua nn model needs an example input: pass --input-shape, "
                                   "e.g. 1,3,32,32")
        specs = tensor_inputs(input_shape, input_dtype)
        model = load_lua_model(path)
        if dtype is not None:
            from .loader import _torch_dtype

            model.to(_torch_dtype(dtype))
        model.to(device)
        specs = lua_inputs(model, specs, path, input_dtype)
        return from_module(model, kind=TENSOR, origin=f"Lua nn model rebuilt as {type(model).__name__}", path=path,
                           input_specs=specs, outputs=output_names(int(getattr(model, "n_outputs", 1))))
    from .loader import load_model

    model = load_model(path, arch, device, dtype, config=config, assume_config=assume_config, input_shape=input_shape,
                       input_dtype=input_dtype)
    assumed = list(getattr(model, "modelport_assumed", []))
    if arch and ":" in arch:
        shape_dtype = getattr(model, "modelport_input", None)
        spec = None
        if shape_dtype is not None:
            from .. import dtypes

            spec = InputSpec("input", dtypes.canonical(shape_dtype[1]), tuple(shape_dtype[0]))
        return from_module(model, kind=TENSOR, origin=f"user module {arch} ({type(model).__name__})", path=path,
                           input_spec=spec, assumed=assumed)
    family = getattr(model, "modelport_arch", None) or arch
    return from_module(model, kind=CAUSAL_LM, origin=f"modelport reference {family} ({type(model).__name__})",
                       path=path, vocab_size=model.config.vocab_size, assumed=assumed)


__all__ = ["BATCH", "CAUSAL_LM", "ENCODER", "SEQUENCE", "TENSOR", "InputSpec", "OrtRunnable", "Runnable", "TorchRunnable",
           "check_memory", "example_feeds", "from_module", "load_runnable", "lua_input", "lua_inputs", "ort_session",
           "output_names", "position_limit", "run_example", "tensor_input", "tensor_inputs", "token_inputs"]
