"""ONNX graphs of the known decoder families built from their records, with a key/value cache.

Where :mod:`modelport.convert.export` traces a torch module through ``torch.onnx``, this writes the
decoder of a GPT-2, Llama (GQA, tied embeddings, Llama 3 rope scaling), Qwen2 (q/k/v biases) or
GPT-NeoX (partial rotary, fused q/k/v, parallel residual) checkpoint straight from its config
dataclass with the ``onnx`` package's helpers (no torch): standard ops at the opset asked, initializers
named after the checkpoint's tensors, their bytes streamed from the source one tensor at a time (peak
memory about one tensor plus the graph): into the ``.onnx`` file itself, or into ``<name>.onnx.data``
with ``external_data`` and past protobuf's 2 GiB limit, as the traced path lays them out. Beside a graph with a cache it
writes ``genai_config.json`` for onnxruntime-genai.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...errors import UnsupportedError

GENAI_CONFIG = "genai_config.json"
PROTOBUF_LIMIT = 2**31 - 1        # bytes of one serialised ModelProto (tensors inside it)
BUILDER = "modelport ONNX builder"


def family_config(src, *, arch=None, config=None, assume_config: bool = False):
    """(open source in its hub layout, family config) for a checkpoint of a known family; raises
    UnsupportedError (or the loader's errors) otherwise."""
    from ...formats import detect
    from ...models import detect as detect_models
    from ...models.config import config_from_hf, normalize_arch, refuse_guesses
    from ...models.layouts import detect_layout, hub_of, to_layout
    from ...models.sources import open_source, read_config_file

    if arch and ":" in arch:
        raise UnsupportedError(f"{src}: a user module (--arch {arch}) is exported by tracing (--exporter torch)")
    fmt = detect(Path(src))
    if fmt.graph:
        raise UnsupportedError(f"{src}: a {fmt.id} graph, not weights of a known family")
    source = open_source(Path(src))
    try:
        fam = normalize_arch(arch) if arch else None
        if config is not None:
            cfg = config_from_hf(config if isinstance(config, dict) else read_config_file(config, source), fam)
        else:
            cfg = detect_models.config_for_source(source, fam)
        if cfg is None:
            raise UnsupportedError(f"{src}: not a checkpoint of a family modelport builds (gpt2, llama, qwen2, gptneox)")
        if not assume_config:
            refuse_guesses(cfg.to_hf_config(), f"{src}: building a {cfg.family} graph")
        layout = detect_layout(source)
        if layout is not None and layout.id != hub_of(cfg.family):
            source = to_layout(source, hub_of(cfg.family), source.config or cfg.to_hf_config())
        from ...models.reconcile import reconcile

        reconcile(source, cfg, config if isinstance(config, dict) else source.config)   # before anything is built
        return source, cfg
    except BaseException:
        source.close()
        raise


def can_build(src, *, arch=None, config=None, engine: str = "auto") -> bool:
    """True when ``src`` is weights of a family the builder knows (what ``--exporter auto`` asks)."""
    from ...errors import ModelportError

    if engine == "transformers" or (arch and ":" in arch):
        return False
    try:
        source, _ = family_config(src, arch=arch, config=config, assume_config=True)
    except (ModelportError, OSError):
        return False
    source.close()
    return True


EXPORTERS = ("auto", "builder", "torch")


def use_builder(src, options, *, arch=None, config=None, input_shape=None, engine: str = "auto") -> bool:
    """Whether an ONNX export of ``src`` is built here rather than traced: forced by ``options.exporter``;
    by default for weights of a known family, unless something only the tracer does is asked for
    (static shapes, an example input shape, the transformers engine)."""
    if options.exporter not in EXPORTERS:
        raise UnsupportedError(f"--exporter {options.exporter}: choose {', '.join(EXPORTERS)}")
    if options.exporter != "auto":
        return options.exporter == "builder"
    if options.static_shapes or input_shape is not None:
        return False
    return can_build(src, arch=arch, config=config, engine=engine)


def _onnx_dtype(source, names, asked: str | None) -> str:
    if asked in ("fp16", "float16"):
        return "float16"
    if asked in ("fp32", "float32"):
        return "float32"
    floats = {source.info(n).dtype for n in names if source.info(n).dtype.startswith(("float", "bfloat"))}
    return "float16" if floats == {"float16"} else "float32"


def build_onnx(src, dst, *, options, force: bool = False, arch=None, config=None, assume_config: bool = False):
    """Build the ONNX graph of the checkpoint at ``src`` into ``dst`` (+ ``dst.data``, and
    ``genai_config.json`` beside it with the cache); returns an :class:`~..export.ExportResult`."""
    import onnx
    from onnx import helper

    from ...atomic import atomic_output, check_destination, check_overlap
    from .. import export_options as ex
    from .decoders import DECODERS
    from .genai import genai_config
    from .graph import Graph
    from .weights import ONNX_TYPE, WeightPlan
    from ...models.layouts import dims as layout_dims

    src, dst = Path(src), Path(dst)
    opset = ex.check_opset(options.opset)
    if options.static_shapes:
        raise UnsupportedError("--static-shapes: the built graph has dynamic axes only; use --exporter torch")
    check_overlap(src, dst)
    check_destination(dst, force)
    kv = options.kv_cache
    genai_dst = dst.parent / GENAI_CONFIG
    # one genai_config.json per directory: another export's is kept unless --force
    genai = kv and (force or not (genai_dst.exists() or genai_dst.is_symlink()))
    source, cfg = family_config(src, arch=arch, config=config, assume_config=assume_config)
    with contextlib.closing(source), ThreadPoolExecutor(1) as pool:
        sha = pool.submit(ex.source_sha256, src)
        family = _family(cfg.family)
        dtype = _onnx_dtype(source, source.names(), options.dtype)
        plan = WeightPlan(source, family, layout_dims(cfg.family, cfg.to_hf_config()), dtype, cfg.tie_word_embeddings)
        g = Graph(opset, ONNX_TYPE[dtype])
        DECODERS[cfg.family](g, plan, cfg, kv)
        plan.check_all_used()
        data_name = dst.name + ".data"
        data_dst = dst.parent / data_name
        exporter = f"{BUILDER} {ex.modelport_version()} (onnx {onnx.__version__}), from the {cfg.family} family record"
        ids = [helper.make_opsetid("", opset)]
        graph_bytes = helper.make_graph(g.constants + g.nodes, f"{cfg.family} decoder", g.inputs,
                                        g.outputs).SerializeToString()
        headers = plan.tensor_protos()

        def model_proto(sha256: str | None, initializers=()):
            """The model: its graph with ``initializers`` (None: no graph), metadata with the source's sha256."""
            model = helper.make_model(helper.make_graph([], "", [], []), opset_imports=ids, producer_name="modelport",
                                      producer_version=ex.modelport_version(),
                                      ir_version=helper.find_min_ir_version_for(ids))
            if initializers is None:
                model.ClearField("graph")
            else:
                model.graph.ParseFromString(graph_bytes)
                model.graph.initializer.extend(initializers)
            for k, v in _metadata(cfg, src, sha256 or "0" * 64, exporter, opset, dtype, kv, plan).items():
                model.metadata_props.add(key=k, value=v)
            return model

        # as the torch path: tensors inside the file unless --external-data, or past protobuf's 2 GiB limit
        inline_size = plan.inline_size(model_proto(None, None).ByteSize(), graph_bytes, headers)
        external = options.external_data or inline_size > PROTOBUF_LIMIT
        notes = []
        if external and not options.external_data:
            notes.append(f"{inline_size / 1e9:.1f} GB is past protobuf's 2 GiB limit for one file: tensors in {data_name}")
        with atomic_output(dst, force) as tmp, \
                (atomic_output(data_dst, force) if external else contextlib.nullcontext()) as tmp_data:
            stage = dst.parent / f".{dst.name}.modelport-{os.getpid()}.stage"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                if external:
                    offsets = plan.write(stage / data_name)         # while the source is hashed
                    onnx.save_model(model_proto(sha.result(), plan.tensor_protos(data_name, offsets)),
                                    str(stage / dst.name))
                    onnx.checker.check_model(str(stage / dst.name))
                    size = (stage / dst.name).stat().st_size + (stage / data_name).stat().st_size
                    notes.insert(0, f"{len(plan.order)} tensors streamed into {data_name} ({dtype})")
                else:
                    # the checker reads the same graph with its tensors pointing into a sparse file of their size
                    offsets, total = plan.packed_offsets()
                    with open(stage / data_name, "wb") as f:
                        f.truncate(total)
                    onnx.save_model(model_proto(None, plan.tensor_protos(data_name, offsets)), str(stage / dst.name))
                    onnx.checker.check_model(str(stage / dst.name))
                    (stage / data_name).unlink()
                    size = plan.write_inline(stage / dst.name, _split(model_proto(None, None))[0], graph_bytes, headers,
                                             lambda: _split(model_proto(sha.result(), None))[1])
                    notes.insert(0, f"{len(plan.order)} tensors streamed into {dst.name} ({dtype}; --external-data "
                                    f"puts them in {data_name})")
                if kv and not genai:
                    notes.append(f"{genai_dst} exists (another export's?) and was kept; pass --force to replace it")
                moves = [(stage / dst.name, tmp)] + ([(stage / data_name, tmp_data)] if external else [])
                if genai:
                    text = json.dumps(genai_config(cfg, dst.name, source.config), indent=4) + "\n"
                    with atomic_output(genai_dst, force) as tmp_genai:
                        tmp_genai.write_text(text)
                        for a, b in moves:
                            os.rename(a, b)
                    notes.append(f"wrote {GENAI_CONFIG} for onnxruntime-genai")
                else:
                    for a, b in moves:
                        os.rename(a, b)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    origin = f"modelport {cfg.family} family record ({cfg.n_layers} layers)"
    return ex.ExportResult(dst, "onnx", exporter, origin, size, opset, data_dst if external else None, None, notes)


def _split(model) -> tuple[bytes, bytes]:
    """A graph-less ModelProto serialised as the fields before its graph (field 7: ir_version first, as
    readers that sniff the file expect) and those after it (opsets, metadata)."""
    from onnx import ModelProto

    head, tail = ModelProto(), ModelProto()
    head.CopyFrom(model)
    tail.CopyFrom(model)
    for field in head.DESCRIPTOR.fields:
        (tail if field.number < 7 else head).ClearField(field.name)
    return head.SerializeToString(), tail.SerializeToString()


def genai_config_of(graph: Path) -> Path | None:
    """The genai_config.json beside ``graph`` when it runs that graph (for removing a failed export)."""
    path = Path(graph).parent / GENAI_CONFIG
    try:
        if path.is_file() and path.stat().st_size < 1 << 20:
            return path if json.loads(path.read_text())["model"]["decoder"]["filename"] == Path(graph).name else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _family(family_id: str):
    from ...models import families

    return families.get(family_id)


def _metadata(cfg, src: Path, sha: str, exporter: str, opset: int, dtype: str, kv: bool, plan) -> dict[str, str]:
    from .. import export_options as ex
    from .decoders import BATCH, SEQ
    from .graph import FUSED_OPSET

    inputs = [{"name": "input_ids", "dtype": "int64", "shape": [BATCH, SEQ]},
              {"name": "attention_mask", "dtype": "int64", "shape": [BATCH, SEQ]}]
    meta = {"modelport.source": str(src), "modelport.source_sha256": sha, "modelport.version": ex.modelport_version(),
            "modelport.exporter": exporter, "modelport.kind": "causal-lm",
            "modelport.origin": f"modelport {cfg.family} family record", "modelport.inputs": json.dumps(inputs),
            "modelport.outputs": json.dumps(["logits"]), "modelport.opset": str(opset),
            "modelport.vocab_size": str(cfg.vocab_size), "modelport.dtype": dtype,
            "modelport.max_positions": str(cfg.max_positions),
            "modelport.kv_cache": json.dumps({"layers": cfg.n_layers, "kv_heads": cfg.n_kv_heads,
                                              "head_dim": cfg.head_dim} if kv else None),
            "modelport.weights": "checkpoint names and orientation: no tensor transposed ([out, in] weights "
                                 "feed Gemm with transB=1)"}
    if dtype != "float32" and opset >= FUSED_OPSET:
        meta["modelport.float32"] = ("norm statistics (RMSNormalization / LayerNormalization stash_type 1), rotary "
                                     "angles (Cast after) and the attention softmax (Attention softmax_precision 1) "
                                     "run in float32; weights, activations and the cache are " + dtype)
    elif dtype != "float32":
        meta["modelport.float32"] = ("norm statistics, rotary angles, attention scores and softmax run in float32 "
                                     "(Cast around them); weights, activations and the cache are " + dtype)
    aliases = {}
    out_name, in_name = _family(cfg.family).tied
    if cfg.tie_word_embeddings:
        aliases[out_name] = plan(in_name)
    if aliases:
        meta["modelport.aliases"] = json.dumps(aliases)
    return meta


__all__ = ["BUILDER", "EXPORTERS", "GENAI_CONFIG", "build_onnx", "can_build", "family_config", "genai_config_of", "use_builder"]
