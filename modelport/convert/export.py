"""Exporters: a runnable model written as TorchScript (script or trace) or as ONNX at a chosen opset.

ONNX. The exporter is picked from the opset, as measured with torch 2.13 / onnx 1.23 / onnxruntime 1.32:
the TorchScript-based ``torch.onnx.export(dynamo=False)`` for opsets 14-20 (it needs ``attention_mask``
traced, which modelport always does), the torch.export-based ``dynamo=True`` (needs ``onnxscript``) for
21-24; ``dynamo=True`` below 18 gives invalid graphs, and opset 13 lacks ``Trilu``. After export the
file's ``opset_import`` must equal the request, ``onnx.checker.check_model`` runs on the path, the graph
runs in onnxruntime at a second batch size and sequence length and is compared with eager, and
``metadata_props`` record the source (path, sha256), modelport's version, the exporter and the opset.
Weights keep their parameter names (no constant folding and, for ``dynamo=True``, no graph
optimisation: either would store transposed or fused copies under new names; onnxruntime folds them
when it loads the graph); a tied weight is one initializer, its other name recorded in
``modelport.aliases``. Over 2 GB, or with ``external_data``, tensors go to one ``<name>.onnx.data`` beside
the file, by relative location.

TorchScript. ``script`` for modelport's reference models (written to be scriptable), ``trace`` for
everything else; a trace is checked at a second batch size and sequence length against eager and
refused when it specialised.

Both write through :func:`modelport.atomic.atomic_output`: nothing appears unless it all succeeded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..atomic import atomic_output, check_destination, check_overlap
from ..formats._onnxproto import metadata_entry, top_level, varint
from ..formats._untrusted import check_regular
from ..errors import MissingDependencyError, ModelportError, UnsupportedError
from ..models.runnable import TENSOR, run_example
from ..models.spec import LoadSpec
from .export_options import (DEFAULT_OPSET, LEGACY_MAX_OPSET, MAX_OPSET, MIN_OPSET, ExportOptions,  # noqa: F401
                             ExportResult, check_opset)
from .export_options import modelport_version as _version
from .export_options import source_sha256 as _sha256

TWO_GB = 2 * 10**9 - 64 * 2**20  # protobuf's limit, with room for the graph itself
METHODS = ("script", "trace")


def _feeds(runnable, static: bool, second: bool):
    """Inputs to trace with (batch 2, a left-padded row) and to check with (batch 3, longer, padded)."""
    from ..models.runnable import CAUSAL_LM, ENCODER, example_feeds

    if runnable.kind not in (CAUSAL_LM, ENCODER):
        return example_feeds(runnable, seed=7 if second else 0)
    if static:
        return example_feeds(runnable, batch=1, seq_len=16, seed=7 if second else 0)
    if second:
        return example_feeds(runnable, batch=3, seq_len=11, seed=7, left_pad=3)
    return example_feeds(runnable, batch=2, seq_len=7, seed=0, left_pad=2)


def _check(runnable, got: dict, want: dict, feeds: dict, fp16: bool, base: float):
    """The first output of ``got`` against eager's ``want`` by :func:`modelport.parity.metrics.compare_tensors`
    (padded positions of token models excluded), held to ``base`` (2e-2 in fp16) times the output's scale."""
    from ..parity.metrics import Tolerance, compare_tensors

    name = runnable.outputs[0]
    a, b = want[name].float().cpu(), got[name].float().cpu()
    if a.shape != b.shape:
        raise ModelportError(f"the exported model returns {name} of shape {list(b.shape)}, eager {list(a.shape)}")
    scale = max(1.0, a.abs().max().item()) if a.numel() and bool(a.isfinite().all()) else 1.0
    tol = Tolerance((2e-2 if fp16 else base) * scale, 0.0, "float16" if fp16 else "float32", given=True)
    if not a.numel():
        return 0.0, tol.atol
    c = compare_tensors(a, b, tol, output=name, inputs="export check", mask=feeds.get("attention_mask"))
    if c.problem is not None:            # nothing finite in eager to compare with
        return 0.0, tol.atol
    return (c.max_abs if c.max_abs is not None and not c.nonfinite else float("inf")), tol.atol


def _load(src, load: LoadSpec, options: ExportOptions):
    """The runnable to export, as ``load`` describes it, on the export's device and in its dtype."""
    from ..models.runnable import load_runnable

    dtype = {"fp32": "float32", "fp16": "float16", None: None}.get(options.dtype, options.dtype)
    runnable = load_runnable(src, load.replace(device=options.device, dtype=dtype))
    if runnable.backend == "onnxruntime":
        raise UnsupportedError(f"{src}: already an ONNX graph; modelport exports torch models (eager or TorchScript)")
    if (load.input_shape or load.input_dtype) and runnable.kind != TENSOR:    # said, not silently ignored
        raise UnsupportedError(f"{src}: --input-shape and --input-dtype are for tensor models; this is a {runnable.kind} "
                               f"model whose inputs ({', '.join(i.name for i in runnable.inputs)}) the export shapes "
                               "itself: drop them")
    return runnable


def _max_positions(runnable) -> int | None:
    """The position table's length, recorded so a run of the exported file stays inside it."""
    from ..models.runnable import position_limit

    return position_limit(runnable)


def _metadata(runnable, src: Path, sha: str, exporter: str, opset: int | None) -> dict[str, str]:
    meta = {"modelport.source": str(src), "modelport.source_sha256": sha, "modelport.version": _version(),
            "modelport.exporter": exporter, "modelport.kind": runnable.kind, "modelport.origin": runnable.origin,
            "modelport.inputs": json.dumps([{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)}
                                            for i in runnable.inputs]),
            "modelport.outputs": json.dumps(list(runnable.outputs))}
    if opset is not None:
        meta["modelport.opset"] = str(opset)
    if runnable.vocab_size is not None:
        meta["modelport.vocab_size"] = str(runnable.vocab_size)
    if _max_positions(runnable) is not None:
        meta["modelport.max_positions"] = str(_max_positions(runnable))
    prefix = runnable.prefix
    if prefix:
        meta["modelport.strip_prefix"] = prefix
    return meta


def _tied(module) -> dict[str, str]:
    """alias -> first name, for state-dict entries that are the same tensor."""
    seen, out = {}, {}
    for name, t in module.state_dict(keep_vars=True).items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation notices, tracer warnings and progress prints kept from users' output."""
    from ..formats.torchscript import quiet_jit

    import logging

    torch_onnx_log = logging.getLogger("torch.onnx")      # "torchvision is not installed. Skipping …"
    onnx_level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    hf_logging = sys.modules.get("transformers.utils.logging")     # only when transformers is already in use
    level = hf_logging.get_verbosity() if hf_logging else None
    if hf_logging:
        hf_logging.set_verbosity_error()
    try:
        with quiet_jit(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_log.setLevel(onnx_level)
        if hf_logging:
            hf_logging.set_verbosity(level)


# -- ONNX -------------------------------------------------------------------------------------------

# torch dtype name -> onnx.TensorProto.DataType
_ONNX_TYPE = {"float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
              "float64": 11, "bfloat16": 16}


def _named_tensors(module) -> dict:
    """Parameters and buffers by name, each tensor once (a tied weight under its first name)."""
    out = dict(module.named_parameters())
    for name, b in module.named_buffers():
        out.setdefault(name, b)
    return out


def _add_weights(path: Path, tensors: dict) -> None:
    """Turn a graph exported without parameters (they became graph inputs named after them) into one
    with initializers, writing each tensor's bytes straight from the module into the file.

    ``torch.onnx.export(export_params=True)`` builds the whole model as a protobuf in memory, then a
    serialized copy: twice the weights on top of the module. Here the weightless graph is parsed
    (small), the parameter inputs dropped, and the ModelProto written as its fields, the graph's
    length computed beforehand and each initializer (dims, type, name, raw_data) streamed after the
    graph's other fields. Protobuf does not care about field order."""
    import onnx
    import torch

    proto = onnx.load(str(path))
    graph = proto.graph
    used = {i.name for i in graph.input} & set(tensors)
    inputs = [i for i in graph.input if i.name not in used]
    del graph.input[:]
    graph.input.extend(inputs)
    entries, total = [], 0
    for name in (n for n in tensors if n in used):
        t = tensors[name].detach().cpu().contiguous()
        from .. import dtypes

        kind = _ONNX_TYPE.get(dtypes.canonical(t.dtype))
        if kind is None:
            raise UnsupportedError(f"tensor {name!r} of dtype {t.dtype} has no ONNX type")
        nbytes = t.numel() * t.element_size()
        key = name.encode()
        head = (b"".join(b"\x08" + varint(d) for d in t.shape) + b"\x10" + varint(kind)
                + b"\x42" + varint(len(key)) + key + b"\x4a" + varint(nbytes))
        entry = b"\x2a" + varint(len(head) + nbytes) + head
        entries.append((entry, t))
        total += len(entry) + nbytes
    body = graph.SerializeToString()
    proto.ClearField("graph")
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
        f.write(b"\x3a" + varint(len(body) + total))
        f.write(body)
        for entry, t in entries:
            f.write(entry)
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def exporter_is_legacy(opset: int) -> bool:
    return opset <= LEGACY_MAX_OPSET


def _export_graph(module, args: tuple, names: list[str], outputs: list[str], path: Path, opset: int,
                  static: bool) -> str:
    """torch.onnx.export with the exporter the opset needs; returns its description. ``outputs``: the names
    of the graph's outputs (a language model's first only)."""
    import torch

    if exporter_is_legacy(opset):
        axes = None if static else {n: {0: "batch", 1: "sequence"} for n in names + outputs[:1]}
        tensors = _named_tensors(module)
        stream = sum(t.numel() * t.element_size() for t in tensors.values()) <= TWO_GB
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=False,
                              export_params=not stream)
        if stream:
            _add_weights(path, {n: t for n, t in tensors.items() if n not in names})
        return f"torch.onnx.export (TorchScript-based, dynamo=False), torch {torch.__version__}"
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"ONNX opset {opset} needs torch's torch.export-based exporter, which needs the "
                                     "package 'onnxscript'; pip install onnxscript (or choose --opset 14-20)") from exc
    shapes = None
    if not static:
        dim = torch.export.Dim.DYNAMIC
        shapes = _by_signature(module, tuple({0: dim, 1: dim} if a.dim() >= 2 else {} for a in args))
    with _quiet():
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset, input_names=names,
                          output_names=outputs, dynamic_shapes=shapes, external_data=False, optimize=False)
    return f"torch.onnx.export (torch.export-based, dynamo=True), torch {torch.__version__}"


def _by_signature(module, shapes: tuple) -> tuple:
    """``dynamic_shapes`` in the structure of ``module.forward``'s parameters, as torch.export matches them: the
    shapes of arguments taken by ``*args`` (transformers encoders' wrapper) go in one nested tuple."""
    import inspect

    params = list(inspect.signature(module.forward).parameters.values())
    if not any(p.kind is p.VAR_POSITIONAL for p in params):
        return shapes
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return (*shapes[:n], tuple(shapes[n:]))


def _finish_onnx(path: Path, data_name: str, external: bool, opset: int, meta: dict, tied: dict, prefix: str,
                 kept: set[str] | None = None, state_names: set[str] | None = None) -> bool:
    """Check the written opset, add metadata and tied aliases, lay the tensors out; True when external.

    The common case (one file under 2 GB, ``kept`` naming the initializers) never parses the graph: the
    opset is read from the top-level fields and the metadata entries are appended to the file, which
    protobuf merges into the repeated field."""
    import onnx

    size = path.stat().st_size
    if kept is not None and not external and size <= TWO_GB and len(list(path.parent.iterdir())) == 1:
        written, _ = top_level(path)
        if written is not None:
            if written != opset:
                raise UnsupportedError(f"asked for ONNX opset {opset} but the exporter wrote {written}; choose "
                                       f"another --opset ({MIN_OPSET}-{MAX_OPSET})")
            aliases = {a.removeprefix(prefix): k.removeprefix(prefix) for a, k in tied.items()
                       if a not in kept and k in kept}
            if aliases:
                meta = {**meta, "modelport.aliases": json.dumps(aliases)}
            with open(path, "ab") as f:
                f.write(b"".join(metadata_entry(k, v) for k, v in meta.items()))
            onnx.checker.check_model(str(path))
            return False
    proto = onnx.load(str(path))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise UnsupportedError(f"asked for ONNX opset {opset} but the exporter wrote {written}; choose another --opset "
                               f"({MIN_OPSET}-{MAX_OPSET})")
    inits = {t.name for t in proto.graph.initializer}
    aliases = {}
    for a, k in tied.items():        # the exporter may keep a tied weight under either of its names
        if a not in inits and k in inits:
            aliases[a.removeprefix(prefix)] = k.removeprefix(prefix)
        elif k not in inits and a in inits:
            aliases[k.removeprefix(prefix)] = a.removeprefix(prefix)
    if aliases:
        meta = {**meta, "modelport.aliases": json.dumps(aliases)}
    if state_names is not None:      # the exporter's own constants (shapes, folded values), not weights
        constants = sorted(inits - state_names)
        if constants:
            meta = {**meta, "modelport.constants": json.dumps(constants)}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    for p in path.parent.iterdir():          # a >2 GB export may have left one file per tensor
        if p.name != path.name:
            p.unlink()
    external = external or proto.ByteSize() > TWO_GB
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    del proto
    onnx.checker.check_model(str(path))
    return external


def export_onnx_runnable(runnable, dst, *, options: ExportOptions = ExportOptions(), force: bool = False,
                         source_path=None, release: bool = False) -> ExportResult:
    """Write ``runnable`` (a torch module, eager or TorchScript) as ONNX at ``dst``.

    ``release=True`` lets the export drop ``runnable.module`` once the graph is written (the eager
    outputs it is checked against are computed first), so the check of the file does not hold the
    weights twice: for callers that built the runnable only to export it."""
    dst = Path(dst)
    opset = check_opset(options.opset)
    check_destination(dst, force)
    src = Path(source_path or runnable.path or dst)
    data_name = dst.name + ".data"
    data_dst = dst.parent / data_name
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(_sha256, src) if src.exists() else None
        feeds = _feeds(runnable, options.static_shapes, second=False)
        run_example(runnable, feeds, src)
        args = tuple(feeds[i.name].to(runnable.device) for i in runnable.inputs)
        names = [i.name for i in runnable.inputs]
        outputs = list(runnable.outputs) if runnable.kind == TENSOR else list(runnable.outputs[:1])   # every Lua output
        with atomic_output(dst, force) as tmp:
            stage = dst.parent / f".{dst.name}.modelport-{os.getpid()}.stage"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                staged = stage / dst.name
                static = options.static_shapes or runnable.kind == TENSOR     # tensor models have one fixed shape
                check_feeds = _feeds(runnable, options.static_shapes, second=True)
                want = run_example(runnable, check_feeds, src)
                exporter = _export_graph(runnable.module, args, names, outputs, staged, opset, static)
                meta = _metadata(runnable, src, sha.result() if sha else "", exporter, opset)
                kept = None
                if exporter_is_legacy(opset):        # it names initializers after the parameters, once each
                    kept = set(_named_tensors(runnable.module))
                tied = _tied(runnable.module)
                state_names = set(runnable.module.state_dict()) | set(_named_tensors(runnable.module))
                if release:
                    runnable.module = args = None
                    import gc

                    gc.collect()
                external = _finish_onnx(staged, data_name, options.external_data, opset, meta, tied,
                                        runnable.prefix, kept, state_names)
                diff = _check_onnx(runnable, staged, options, check_feeds, want)
                size = staged.stat().st_size
                with atomic_output(data_dst, force) if external else contextlib.nullcontext() as tmp_data:
                    if external:
                        size += (stage / data_name).stat().st_size
                        os.rename(stage / data_name, tmp_data)
                    os.rename(staged, tmp)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    return ExportResult(dst, "onnx", exporter, runnable.origin, size, opset, data_dst if external else None, diff)


def _check_onnx(runnable, path: Path, options: ExportOptions, feeds: dict, want: dict) -> float:
    """The graph in onnxruntime against the eager outputs ``want`` for ``feeds``; refused beyond tolerance."""
    from ..models.graph import onnx_runnable

    graph = onnx_runnable(path, device=options.device)
    got = graph.run(feeds)
    diff, tol = _check(runnable, got, want, feeds, options.dtype == "fp16", 1e-4)
    if not diff <= tol:
        raise ModelportError(f"the exported ONNX graph differs from the eager model by {diff:.3g} (> {tol:.3g}) at "
                             "another batch size and sequence length; nothing was written")
    return diff


def export_onnx(src_path, dst_path, *, opset: int = DEFAULT_OPSET, dtype: str | None = None, static_shapes: bool = False,
                external_data: bool = False, device: str = "cpu", load: LoadSpec | None = None, force: bool = False,
                **load_kwargs) -> ExportResult:
    """Export the model at ``src_path`` (any runnable source) to ONNX at ``dst_path`` through torch.onnx;
    ``load`` (or its fields as keywords: ``arch``, ``config``, ``input_shape`` …) says how to load it."""
    options = ExportOptions(opset=check_opset(opset), dtype=dtype, static_shapes=static_shapes,
                            external_data=external_data, device=device)
    return _export_traced(src_path, dst_path, "onnx", options, LoadSpec.of(load, **load_kwargs), force)


# -- TorchScript ------------------------------------------------------------------------------------

def export_torchscript_runnable(runnable, dst, *, options: ExportOptions = ExportOptions(), force: bool = False,
                                source_path=None) -> ExportResult:
    """Write ``runnable`` (an eager torch module) as a TorchScript archive at ``dst``."""
    import torch

    from ..formats.torchscript import METADATA_FILE, save_module

    dst = Path(dst)
    check_destination(dst, force)
    if runnable.backend != "torch":
        raise UnsupportedError(f"{runnable.path}: already {runnable.backend}; export a torch model to TorchScript")
    method = options.method or ("script" if runnable.made_by == "reference" else "trace")
    if method not in METHODS:
        raise UnsupportedError(f"--method {method}: choose script or trace")
    src = Path(source_path or runnable.path or dst)
    feeds = _feeds(runnable, False, second=False)
    run_example(runnable, feeds, src)
    args = tuple(feeds[i.name].to(runnable.device) for i in runnable.inputs)
    with _quiet(), torch.no_grad():
        if method == "script":
            try:
                ts = torch.jit.script(runnable.module)
            except Exception as exc:  # torch.jit.frontend errors have no common public base
                raise UnsupportedError(f"{src}: {runnable.origin} cannot be scripted ({str(exc).splitlines()[0][:160]}); "
                                       "use --method trace") from exc
        else:
            ts = torch.jit.trace(runnable.module, args, check_trace=False, strict=False)
    diff = _check_torchscript(runnable, ts, options, method, src)
    meta = {"kind": runnable.kind, "origin": f"TorchScript ({method}) of {runnable.origin}",
            "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in runnable.inputs],
            "outputs": list(runnable.outputs), "vocab_size": runnable.vocab_size, "method": method,
            "max_positions": _max_positions(runnable),
            "source": str(src), "source_sha256": _sha256(src) if src.exists() else "", "version": _version(),
            "exporter": f"torch.jit.{method}, torch {torch.__version__}", "strip_prefix": runnable.prefix}
    with atomic_output(dst, force) as tmp, _quiet():
        save_module(ts, tmp, {METADATA_FILE: json.dumps(meta)})   # a full disk: OSError, not an abort
    return ExportResult(dst, "torchscript", meta["exporter"], runnable.origin, dst.stat().st_size, None, None, diff,
                        [f"method {method}"])


def _check_torchscript(runnable, ts, options: ExportOptions, method: str, src: Path) -> float:
    import torch

    feeds = _feeds(runnable, False, second=True)
    args = tuple(feeds[i.name].to(runnable.device) for i in runnable.inputs)
    want = run_example(runnable, feeds, src)
    try:
        with _quiet(), torch.no_grad():
            out = ts(*args)
        from ..models.runnable import first_outputs

        got = dict(zip(runnable.outputs, first_outputs(out, len(runnable.outputs))))
        diff, tol = _check(runnable, got, want, feeds, options.dtype == "fp16", 1e-5)
    except RuntimeError as exc:
        diff, detail = float("inf"), str(exc).splitlines()[0][:120]
        tol = 0.0
    else:
        detail = None
    if not diff <= tol:
        if method == "trace":
            why = f"fails ({detail})" if detail else f"differs from eager by {diff:.3g}"
            raise UnsupportedError(f"{src}: the traced module specialised to the traced shapes: at another batch size "
                                   f"and sequence length it {why}; use --method script, or a user module "
                                   "(--arch package.module:factory) written to trace")
        raise ModelportError(f"{src}: the scripted module differs from eager by {diff:.3g}; nothing was written")
    return diff


def export_torchscript(src_path, dst_path, *, method: str | None = None, dtype: str | None = None, device: str = "cpu",
                       load: LoadSpec | None = None, force: bool = False, **load_kwargs) -> ExportResult:
    """Export the model at ``src_path`` (any runnable source) to TorchScript at ``dst_path``."""
    options = ExportOptions(method=method, dtype=dtype, device=device)
    return _export_traced(src_path, dst_path, "torchscript", options, LoadSpec.of(load, **load_kwargs), force)


def export(src_path, dst_path, to: str, *, options: ExportOptions = ExportOptions(), load: LoadSpec | None = None,
           force: bool = False, **load_kwargs) -> ExportResult:
    """``convert`` to a graph format: ``to`` is onnx or torchscript. ``load`` describes how to load the
    source (its fields may also be given as keywords: ``arch=``, ``config=``, ``input_shape=``, ``engine=`` …);
    the export's own device and dtype come from ``options``."""
    load = LoadSpec.of(load, **load_kwargs)
    if options.dtype not in (None, "fp32", "fp16", "float32", "float16"):
        raise UnsupportedError(f"--dtype {options.dtype}: graph exports are fp32 or fp16")
    if to == "onnx":
        check_opset(options.opset)
        from .onnx_builder import build_onnx, use_builder
        if use_builder(src_path, options, arch=load.arch, config=load.config, input_shape=load.input_shape,
                       engine=load.engine):
            return build_onnx(src_path, dst_path, options=options, force=force, arch=load.arch, config=load.config,
                              assume_config=load.assume_config)
    elif to != "torchscript":
        raise UnsupportedError(f"format {to!r} is not a graph format")
    return _export_traced(src_path, dst_path, to, options, load, force)


def _export_traced(src_path, dst_path, to: str, options: ExportOptions, load: LoadSpec, force: bool) -> ExportResult:
    """Load the runnable ``load`` describes and export it with torch (torch.onnx or torch.jit)."""
    check_regular(Path(src_path), "source")     # a missing source is named before the destination
    check_overlap(Path(src_path), Path(dst_path))
    check_destination(Path(dst_path), force)
    runnable = _load(src_path, load, options)
    if to == "onnx":
        return export_onnx_runnable(runnable, dst_path, options=options, force=force, source_path=src_path,
                                    release=True)
    return export_torchscript_runnable(runnable, dst_path, options=options, force=force, source_path=src_path)


__all__ = ["export", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportOptions", "ExportResult", "LoadSpec",
           "export_onnx", "export_onnx_runnable", "export_torchscript", "export_torchscript_runnable"]
