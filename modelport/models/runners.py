"""Runnable models: one small interface whatever runs them (torch eager, TorchScript, onnxruntime).

A runnable says what it takes (:class:`~.spec.InputSpec` per input: name, dtype, shape with named
dynamic axes), what it returns (output names), where it came from, and on which device it really
runs; its ``run(feeds)`` maps input names to tensors and returns output names to tensors, and its
``capture(names, feeds)`` returns the outputs of the named modules inside it (per-layer outputs, for
parity's first divergence). Which format makes which runnable is :mod:`.runnable`'s registry; the
makers (:mod:`.graph`, :mod:`.hf_auto`, :mod:`.loader`, :mod:`.lua`) build on this module.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError
from .spec import CAUSAL_LM, ENCODER, InputSpec, random_tensor, token_inputs


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
    made_by: str = ""                   # who built it: reference | transformers | user | lua | torchscript | onnx
    prefix: str = ""                    # a wrapper's prefix on the model's own names ("model." for transformers)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def capture(self, names: list[str], feeds: dict[str, Any], *, ref_inputs: dict | None = None) -> tuple[dict, str]:
        """The outputs of the named modules inside this model on ``feeds`` (by the reference's module
        names) and how they were read; ``ref_inputs`` are the inputs each module received in the
        reference, for backends that judge a module on its own. Empty when this model cannot say."""
        return {}, ""

    def describe(self) -> dict:
        """What ran, for reports: origin, backend, device, inputs and outputs."""
        return {"origin": self.origin, "made_by": self.made_by, "kind": self.kind, "backend": self.backend,
                "device": self.device,
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
        return dict(zip(self.outputs, first_outputs(out, len(self.outputs))))

    @property
    def scripted(self) -> bool:
        """A TorchScript module (its blocks are replayed, not hooked)."""
        import torch

        return isinstance(self.module, torch.jit.ScriptModule)

    def capture(self, names, feeds, *, ref_inputs=None):
        from . import capture

        if self.scripted:
            return capture.replay_script(self, ref_inputs or {}, names), "torchscript-replay"
        return capture.capture_hooks(self, names, feeds)[0], "hooks"

    def capture_with_inputs(self, names: list[str], feeds: dict[str, Any]):
        """Outputs and positional inputs of the named modules in one eager run, and the order they ran in."""
        from . import capture

        return capture.capture_hooks(self, names, feeds, keep_inputs=True)

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

    def capture(self, names, feeds, *, ref_inputs=None):
        from . import capture

        return capture.capture_onnx(self, names, feeds), "onnx-outputs"

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


def first_outputs(out, n: int) -> list:
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


def from_module(module, *, kind: str, origin: str, path=None, vocab_size=None, input_spec: InputSpec | None = None,
                assumed=(), made_by: str = "", input_specs: tuple[InputSpec, ...] | None = None,
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
                         device=device, vocab_size=vocab_size, assumed=list(assumed), module=module, made_by=made_by)
