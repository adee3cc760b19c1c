"""Seeds and mutations for the fuzzer (:mod:`.fuzz`) beyond weight files: ONNX protobufs, TorchScript
archives and conversion manifests, each mutated by bytes and by structure (dims, data types, metadata
values of the wrong type, external-data references, archive members, manifest fields).

ONNX and TorchScript inputs go through the public entry (``modelport.formats.open``), manifests through
the command line (``modelport inspect`` of the model beside it, ``modelport verify``) run in process,
so the fuzzing keeps working whichever reader or loader sits behind them."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path

from .hostile import mutate, mutate_json

# Values a metadata field (or a manifest field) may be replaced with: wrong types, huge numbers, deep
# nesting, bad UTF-8 escapes, paths that leave the directory.
JUNK = ["[1, 2, 3]", "[[1]]", "lots", "{}", "-5", "0", "1e999", '{"a": 5}', "[" * 2000 + "]" * 2000, '"x"', "",
        "null", "9" * 5000, '[{"name": "x"}]', '[{"name": "x", "dtype": "float32", "shape": [40000, 40000]}]',
        '[{"name": 5, "dtype": [], "shape": "x"}]', '{"w": 5}', '{"a": "b"}', "\ud800", "true", "causal-lm", "tensor"]
JUNK_VALUES = [5, -1, 0, 10**30, 1.5, None, True, "x", "", [], [1, 2, 3], [[1]], {}, {"a": 5}, "/etc/hostname",
               "../../x", "a" * 5000, [{"path": 5}], {"path": "/"}, float("nan")]
DEEP = "\u0000deep\u0000"
META_KEYS = ["modelport.aliases", "modelport.constants", "modelport.vocab_size", "modelport.strip_prefix",
             "modelport.inputs", "modelport.outputs", "modelport.kind", "modelport.max_positions", "modelport.origin"]


# -- ONNX ----------------------------------------------------------------------------------------

def onnx_seed(work: Path) -> Path:
    """A small graph whose initializers use raw_data, float_data, int64_data, float16 and a tied alias,
    with every metadata field modelport's exporter writes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    emb = numpy_helper.from_array(rng.standard_normal((6, 4)).astype("float32"), "emb.weight")
    w = helper.make_tensor("lin.weight", TensorProto.FLOAT, [4, 4], rng.standard_normal(16).astype("float32").tolist())
    b = numpy_helper.from_array(rng.standard_normal(4).astype("float16"), "lin.bias")
    idx = helper.make_tensor("idx", TensorProto.INT64, [2], [0, 3])
    shape = helper.make_tensor("const.shape", TensorProto.INT64, [1], [4])
    nodes = [helper.make_node("Gather", ["emb.weight", "ids"], ["e"], name="gather"),
             helper.make_node("MatMul", ["e", "lin.weight"], ["m"], name="matmul"),
             helper.make_node("Cast", ["lin.bias"], ["b32"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Add", ["m", "b32"], ["logits"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 4])],
                              [emb, w, b, idx, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport")
    meta = {"modelport.kind": "causal-lm", "modelport.vocab_size": "6", "modelport.max_positions": "32",
            "modelport.aliases": json.dumps({"head.weight": "emb.weight"}), "modelport.constants": '["const.shape"]',
            "modelport.inputs": json.dumps([{"name": "ids", "dtype": "int64", "shape": ["batch", "sequence"]}]),
            "modelport.outputs": '["logits"]', "modelport.origin": "a seed", "modelport.strip_prefix": ""}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "good.onnx"
    path.write_bytes(model.SerializeToString())
    # the same graph with one initializer in a data file beside it
    ext = work / "ext"
    ext.mkdir(exist_ok=True)
    data = numpy_helper.to_array(w).tobytes()
    (ext / "m.onnx.data").write_bytes(b"\0" * 16 + data)
    w_ext = TensorProto(name="lin.weight", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "m.onnx.data"), ("offset", "16"), ("length", str(len(data)))):
        w_ext.external_data.add(key=k, value=v)
    model.graph.initializer[1].CopyFrom(w_ext)
    (ext / "m.onnx").write_bytes(model.SerializeToString())
    return path


def _onnx_structural(model, rng: random.Random) -> None:
    from onnx import TensorProto

    inits = list(model.graph.initializer)
    t = rng.choice(inits) if inits else None
    op = rng.randrange(10)
    if op == 0 and t is not None:                               # dims: negative, huge, more, fewer
        dims = list(t.dims)
        choice = rng.randrange(4)
        if choice == 0 and dims:
            dims[rng.randrange(len(dims))] = rng.choice([-1, -(1 << 40), 0])
        elif choice == 1 and dims:
            dims[rng.randrange(len(dims))] = rng.choice([1 << 31, 1 << 40, (1 << 62) - 1, 40000])
        elif choice == 2:
            dims += [rng.randint(0, 5) for _ in range(rng.choice([1, 2, 70]))]
        else:
            dims = dims[:-1]
        del t.dims[:]
        t.dims.extend(dims)
    elif op == 1 and t is not None:                             # data type
        t.data_type = rng.choice([0, 4, 8, 12, 13, 17, 20, 23, 99, 1, 7, 10, 16])
    elif op == 2 and t is not None:                             # values: fewer, more, gone
        if t.raw_data:
            t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)] if rng.random() < 0.7 else t.raw_data * 2
        for field in ("float_data", "int64_data", "int32_data", "double_data"):
            values = list(getattr(t, field))
            if values:
                del getattr(t, field)[rng.randrange(len(values) + 1):]
    elif op == 3 and t is not None:                             # external data pointing anywhere
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        loc = rng.choice(["../../etc/hostname", "/etc/hostname", "m.onnx.data", "", "nope.data", "."])
        for k, v in (("location", loc), ("offset", rng.choice(["0", "-16", "99999999999", "x"])),
                     ("length", rng.choice(["64", "-1", "1e9", "99999999999"]))):
            t.external_data.add(key=k, value=v)
    elif op == 4 and t is not None:                             # names: duplicated, empty, long
        t.name = rng.choice([inits[0].name, "", "x" * 5000, "head.weight", "\u202e"])
    elif op in (5, 6, 7):                                       # metadata values of the wrong type
        key = rng.choice(META_KEYS)
        props = {p.key: p.value for p in model.metadata_props}
        props[key] = rng.choice(JUNK)
        del model.metadata_props[:]
        for k, v in props.items():
            try:
                model.metadata_props.add(key=k, value=v)
            except (ValueError, TypeError):
                pass
    elif op == 8:                                               # an initializer removed or duplicated
        if inits and rng.random() < 0.5:
            del model.graph.initializer[rng.randrange(len(inits))]
        elif inits:
            model.graph.initializer.add().CopyFrom(rng.choice(inits))
    else:                                                       # opset and IR version
        model.ir_version = rng.choice([0, 1, 3, 99, 1 << 40])
        if model.opset_import:
            model.opset_import[0].version = rng.choice([0, 1, 7, 99, -1])


def onnx_variant(seed: Path, case: Path, rng: random.Random) -> tuple[Path, str | None]:
    import onnx

    external = rng.random() < 0.25
    src = seed.parent / "ext" / "m.onnx" if external else seed
    if external:
        shutil.copytree(src.parent, case)
        target = case / "m.onnx"
    else:
        case.mkdir()
        target = case / "m.onnx"
    data = src.read_bytes()
    if rng.random() < 0.6:
        model = onnx.load_from_string(data)
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
            _onnx_structural(model, rng)
        try:
            data = model.SerializeToString()
        except Exception:  # noqa: BLE001 - protobuf refuses to serialise some values: keep the bytes
            pass
    if rng.random() < 0.4:
        data = mutate(data, rng)
    target.write_bytes(data)
    if external and rng.random() < 0.2:
        (case / "m.onnx.data").write_bytes(mutate((case / "m.onnx.data").read_bytes(), rng))
    return target, "onnx" if rng.random() < 0.5 else None


# -- TorchScript ---------------------------------------------------------------------------------

def torchscript_seed(work: Path) -> Path:
    """A scripted module with a tied pair and a buffer, and modelport's metadata."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(6, 4)
            self.lin = torch.nn.Linear(4, 6)
            self.head = torch.nn.Linear(4, 6, bias=False)
            self.head.weight = self.emb.weight
            self.register_buffer("scale", torch.tensor([0.5]))

        def forward(self, ids):
            return self.head(self.emb(ids)) * self.scale + self.lin(self.emb(ids))

    torch.manual_seed(0)
    module = torch.jit.script(Tiny().eval())
    meta = {"kind": "causal-lm", "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "outputs": ["logits"], "vocab_size": 6, "max_positions": 32, "origin": "a seed", "strip_prefix": ""}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "good.ts"
    torch.jit.save(module, str(path), _extra_files={"modelport.json": json.dumps(meta)})
    return path


def _rezip(members: dict[str, bytes], path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def torchscript_variant(seed: Path, case: Path, rng: random.Random) -> tuple[Path, str | None]:
    target = case.with_suffix(".ts")
    if target.exists():
        target.unlink()
    if rng.random() < 0.35:                                     # bytes of the whole archive
        data = seed.read_bytes()
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
            data = mutate(data, rng)
        target.write_bytes(data)
        return target, "torchscript" if rng.random() < 0.5 else None
    with zipfile.ZipFile(seed) as z:
        members = {n: z.read(n) for n in z.namelist()}
    names = sorted(members)
    meta_name = next(n for n in names if n.endswith("extra/modelport.json"))
    op = rng.randrange(6)
    if op in (0, 1):                                            # metadata: fields of the wrong type
        meta = json.loads(members[meta_name])
        key = rng.choice(["kind", "inputs", "outputs", "vocab_size", "max_positions", "strip_prefix", "origin"])
        meta[key] = rng.choice(JUNK_VALUES + [[{"name": "x", "shape": [2]}], [{"name": "x", "dtype": "float32",
                                                                           "shape": [40000, 40000]}]])
        members[meta_name] = json.dumps(meta, allow_nan=True).encode() if rng.random() < 0.8 else \
            rng.choice([b"[1, 2]", b"5", b"[" * 100_000, b"\xff\xfe"])
    elif op == 2:
        members[meta_name] = mutate_json(members[meta_name].decode(), rng)
    elif op == 3:                                               # one member's bytes
        name = rng.choice([n for n in names if n.endswith(".pkl")] or names)
        members[name] = mutate(members[name], rng)
    elif op == 4:                                               # a storage shortened, grown or removed
        storages = [n for n in names if "/data/" in n]
        if storages:
            name = rng.choice(storages)
            if rng.random() < 0.3:
                del members[name]
            else:
                members[name] = members[name][:rng.randrange(len(members[name]) + 1)] if rng.random() < 0.7 \
                    else members[name] * 3
    else:                                                       # the program's text
        code = [n for n in names if "/code/" in n and n.endswith(".py")]
        if code:
            name = rng.choice(code)
            members[name] = mutate(members[name], rng)
    _rezip(members, target)
    return target, "torchscript" if rng.random() < 0.5 else None


# -- manifests -----------------------------------------------------------------------------------

def manifest_seed(work: Path, good_pt: Path) -> Path:
    """A conversion's output with its manifest beside it, both written by modelport's convert."""
    from modelport.convert import convert

    work.mkdir(parents=True, exist_ok=True)
    out = work / "out.safetensors"
    convert(good_pt, out, force=True)
    if not (work / "out.safetensors.modelport.json").is_file():
        raise RuntimeError("convert wrote no manifest beside its output")
    return out


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _structural_manifest(data: dict, rng: random.Random) -> dict:
    spots = [p for p, _ in _walk(data) if p]
    path = rng.choice(spots)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    op = rng.randrange(4)
    if op == 0:
        parent[path[-1]] = rng.choice(JUNK_VALUES)
    elif op == 1 and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == 2:
        parent[path[-1]] = DEEP              # replaced by nested lists in the text (json cannot write them)
    else:
        parent[path[-1]] = {"path": rng.choice(["/etc/hostname", "../../x", "out.safetensors", "."]),
                            "sha256": rng.choice(["0" * 64, 5, None])}
    return data


def manifest_variant(seed: Path, case: Path, rng: random.Random) -> tuple[Path, str | None]:
    case.mkdir()
    out = case / seed.name
    shutil.copy(seed, out)
    text = seed.with_name(seed.name + ".modelport.json").read_text()
    op = rng.randrange(3)
    if op == 0:
        data = mutate_json(text, rng)
    elif op == 1:
        data = mutate(text.encode(), rng)
    else:
        data = json.dumps(_structural_manifest(json.loads(text), rng), allow_nan=True)
        depth = rng.choice([10, 5000])
        data = data.replace(json.dumps(DEEP), "[" * depth + "1" + "]" * depth).encode()
    out.with_name(out.name + ".modelport.json").write_bytes(data)
    return out, "manifest"


def exercise_manifest(out: Path) -> str:
    """``inspect`` of the model beside the manifest and ``verify`` of the manifest, through the command line
    in process: 'refused' (exit 2, one line), 'valid' (exit 0 or 1), 'other:…' (anything else)."""
    from tests.conftest import run_cli_in_process

    outcomes = []
    for args in (("inspect", out), ("verify", out.with_name(out.name + ".modelport.json"))):
        r = run_cli_in_process(*args)
        lines = r.stderr.strip().splitlines()
        if "Traceback" in r.stderr or r.returncode not in (0, 1, 2) or (r.returncode == 2 and len(lines) != 1):
            last = lines[-1][:100] if lines else f"exit {r.returncode}"
            return f"other:{args[0]}: exit {r.returncode}: {last}"
        outcomes.append("refused" if r.returncode == 2 else "valid")
    return "refused" if "refused" in outcomes else "valid"


__all__ = ["exercise_manifest", "manifest_seed", "manifest_variant", "onnx_seed", "onnx_variant", "torchscript_seed",
           "torchscript_variant"]
