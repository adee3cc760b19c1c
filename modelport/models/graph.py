"""Runnables from graph files: TorchScript archives (``torch.jit.load``) and ONNX models (onnxruntime).

What a graph takes and returns comes from the file: modelport's exporter records the kind, inputs,
outputs and vocabulary size (TorchScript: ``extra/modelport.json``; ONNX: ``metadata_props`` and the
graph's own inputs). For other producers' files it is read from the forward signature (TorchScript) or
the graph inputs (ONNX): ``input_ids`` makes a language model, anything else a tensor model, whose
fixed shape comes from ``--input-shape`` when the file leaves an axis open.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError, UnsupportedError
from ..formats.graphmeta import GraphMeta, from_onnx, from_torchscript
from .runners import OrtRunnable, TorchRunnable, ort_session
from .spec import BATCH, CAUSAL_LM, ENCODER, SEQUENCE, TENSOR, InputSpec, LoadSpec, tensor_input
from .user import parse_input_shapes

TOKEN_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# onnxruntime's type strings -> canonical dtype names
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
             "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int16)": "int16"}


def _specs_from_meta(meta: GraphMeta) -> tuple[InputSpec, ...] | None:
    if not meta.inputs:
        return None
    return tuple(InputSpec(i.name, i.dtype, i.shape) for i in meta.inputs)


def _kind_of(names: list[str], outputs: list[str]) -> str:
    if "input_ids" in names:
        return CAUSAL_LM if "logits" in outputs else ENCODER
    return TENSOR


def _fill_tensor_spec(path: Path, spec: InputSpec, input_shape, input_dtype) -> InputSpec:
    if input_shape is not None:
        given = tensor_input(input_shape, input_dtype)
        return InputSpec(spec.name, given.dtype if input_dtype else spec.dtype, given.shape)
    if any(isinstance(d, str) or d is None for d in spec.shape):
        raise UnsupportedError(f"{path}: input {spec.name!r} has open axes {list(spec.shape)}; pass --input-shape "
                               "to say what to run it with")
    return spec


def _fill_tensor_specs(path: Path, specs, input_shape, input_dtype) -> tuple[InputSpec, ...]:
    """Each input's spec, its shape from ``input_shape`` when given (once per input, in order)."""
    specs = tuple(specs)
    if input_shape is None:
        return tuple(_fill_tensor_spec(path, s, None, input_dtype) for s in specs)
    shapes = parse_input_shapes(input_shape)
    if len(shapes) != len(specs):
        raise UnsupportedError(f"{path}: the graph takes {len(specs)} input{'s' * (len(specs) != 1)} "
                               f"({', '.join(s.name for s in specs)}) and --input-shape gave {len(shapes)}; give it "
                               "once per input, in that order")
    return tuple(_fill_tensor_spec(path, s, shape, input_dtype) for s, shape in zip(specs, shapes))


def torchscript_runnable(path, *, device: str = "cpu", input_shape=None, input_dtype=None,
                         trust_torchscript: bool | None = None) -> TorchRunnable:
    """The TorchScript module at ``path`` (its pickles allow-listed and its code checked first, see
    :func:`~modelport.formats.torchscript.load_module`; ``trust_torchscript`` skips the code check), on ``device``."""
    from ..formats.torchscript import load_module, read_metadata

    path = Path(path)
    module = load_module(path, device="cpu", trust_torchscript=trust_torchscript).to(device)
    meta = from_torchscript(read_metadata(path), path)
    inputs = _specs_from_meta(meta)
    if inputs is not None:
        kind, outputs = meta.kind or TENSOR, meta.outputs or ("output",)
    else:
        args = [a.name for a in module.forward.schema.arguments][1:]     # without self
        if "input_ids" in args:
            names = [a for a in args if a in TOKEN_NAMES]
            kind, outputs = CAUSAL_LM, ("logits",)
            inputs = tuple(InputSpec(n, "int64", (BATCH, SEQUENCE)) for n in names)
        else:
            kind, outputs = TENSOR, ("output",)
            inputs = tuple(InputSpec(a, "float32", (None,)) for a in args)
    if kind == TENSOR:
        inputs = _fill_tensor_specs(path, inputs, input_shape, input_dtype)
    return TorchRunnable(kind=kind, inputs=inputs, outputs=outputs,
                         origin=meta.origin or f"TorchScript module {module.original_name}", path=path,
                         backend="torchscript", device=str(device), vocab_size=meta.vocab_size,
                         max_positions=meta.max_positions, module=module, made_by="torchscript")


def onnx_runnable(path, *, device: str = "cpu", input_shape=None, input_dtype=None) -> OrtRunnable:
    """The ONNX graph at ``path`` in an onnxruntime session; external data checked before it is read."""
    from ..formats.onnx import load_proto

    path = Path(path)
    proto = load_proto(path)            # refuses external data outside the directory or past a file's end
    meta = from_onnx({p.key: p.value for p in proto.metadata_props}, path)
    double = any(i.type.tensor_type.elem_type == 11 for i in proto.graph.input)     # 11: TensorProto.DOUBLE
    del proto
    try:
        session, providers = ort_session(path, device)    # its errors are one-line FormatErrors
    except FormatError as exc:
        if double and "NOT_IMPLEMENTED" in str(exc):
            raise UnsupportedError(f"{exc}; onnxruntime has no float64 kernel for an op of this graph: export the "
                                   "model in float32 (--dtype fp32)") from exc
        raise
    inputs = []
    for i in session.get_inputs():
        if i.type not in ORT_TYPES:
            raise UnsupportedError(f"{path}: input {i.name!r} has type {i.type}, which modelport cannot feed")
        inputs.append(InputSpec(i.name, ORT_TYPES[i.type], tuple(d if isinstance(d, (int, str)) else None
                                                                   for d in i.shape)))
    outputs = tuple(o.name for o in session.get_outputs())
    cache, positions = _cache_inputs(inputs)
    if cache or positions:             # a decoder with a key/value cache: run from an empty cache
        inputs = [i for i in inputs if i.name not in {c[0] for c in cache} | {"position_ids"}]
        outputs = tuple(o for o in outputs if not o.startswith("present"))
    kind = meta.kind or _kind_of([i.name for i in inputs], list(outputs))
    if kind == TENSOR and meta.inputs:
        inputs = list(_specs_from_meta(meta))
    if kind == TENSOR:
        inputs = list(_fill_tensor_specs(path, inputs, input_shape, input_dtype))
    else:
        inputs = [InputSpec(i.name, i.dtype, tuple(d if isinstance(d, (int, str)) else (BATCH, SEQUENCE)[min(k, 1)]
                                                   for k, d in enumerate(i.shape))) for i in inputs]
    vocab = meta.vocab_size
    if vocab is None and kind == CAUSAL_LM:
        last = session.get_outputs()[0].shape[-1]
        vocab = last if isinstance(last, int) else None
    if vocab is None and kind == ENCODER:
        vocab = 2      # ids are only looked up: any id below the smallest vocabulary runs
    return OrtRunnable(kind=kind, inputs=tuple(inputs), outputs=outputs,
                       origin=f"ONNX graph of {meta.origin}" if meta.origin is not None
                       else f"ONNX graph ({meta.exporter or 'another producer'})", path=path,
                       device="cuda" if providers and providers[0].startswith("CUDA") else "cpu", vocab_size=vocab,
                       max_positions=meta.max_positions, module=session, providers=tuple(providers), cache=cache,
                       positions=positions, made_by="onnx")


def make_torchscript(path: Path, spec: LoadSpec) -> TorchRunnable:
    return torchscript_runnable(path, device=spec.device, input_shape=spec.input_shape, input_dtype=spec.input_dtype,
                                trust_torchscript=spec.trust_torchscript)


def make_onnx(path: Path, spec: LoadSpec) -> OrtRunnable:
    return onnx_runnable(path, device=spec.device, input_shape=spec.input_shape, input_dtype=spec.input_dtype)


def _cache_inputs(inputs: list[InputSpec]) -> tuple[tuple, bool]:
    """The past key/value inputs of a decoder graph with a cache (name, dtype, kv heads, head size) and
    whether it takes position_ids, when it takes both input_ids and past_key_values.N.key/value."""
    names = {i.name for i in inputs}
    past = [i for i in inputs if i.name.startswith("past_key_values.")]
    if "input_ids" not in names or not past:
        return (), False
    cache = []
    for i in past:
        if len(i.shape) != 4 or not all(isinstance(d, int) for d in (i.shape[1], i.shape[3])):
            raise UnsupportedError(f"input {i.name!r} has shape {list(i.shape)}; modelport runs caches laid out "
                                   "(batch, kv_heads, past_sequence_length, head_dim)")
        cache.append((i.name, i.dtype, i.shape[1], i.shape[3]))
    return tuple(cache), "position_ids" in names
