"""Sizes and embedded records that a file or config claims, held to what the weights and the machine
allow: configs reconciled with the weights before anything is built, parity's sizes bounded by the
position table and an estimate of memory, every metadata field validated where it is read, and other
libraries' errors reported as one line (exit 2), their full text kept for ``--debug``."""

from __future__ import annotations

import json
import zipfile

import pytest

import modelport
from modelport import formats
from modelport.errors import FormatError, LayoutError, ModelportError, UnsupportedError
from modelport.models.runnable import load_runnable

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


def _one_line_exit_2(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# -- tiny files, built here ------------------------------------------------------------------------

def _gpt2_dir(path, **config):
    from tests.parity import faults

    state, cfg = faults.gpt2_state(seed=3)          # 3 blocks, n_embd 24, vocab 37, n_positions 20
    return faults.write_dir(path, state, {**cfg, **config})


def _bert_dir(path, **config):
    import transformers

    from tests.models import tiny

    cfg = transformers.BertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                                  vocab_size=37, max_position_embeddings=16, type_vocab_size=2)
    tiny.randomize(transformers.BertModel(cfg), seed=5).save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, **config}))
    return path


def _onnx_relu(path, meta: dict | None = None, init=None, node_name: str = "relu"):
    """A graph ``y = relu(x + b)``; ``init`` replaces the initializer ``b``."""
    from onnx import TensorProto, helper

    b = init if init is not None else helper.make_tensor("b", TensorProto.FLOAT, [4], [1.0, -2.0, 3.0, -4.0])
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["s"], name="add"),
                           helper.make_node("Relu", ["s"], ["y"], name=node_name)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [b])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    path.write_bytes(model.SerializeToString())
    return path


def _torchscript(path, meta: dict | None = None):
    module = torch.jit.script(torch.nn.Linear(4, 3))
    extra = {"modelport.json": json.dumps(meta)} if meta is not None else {}
    torch.jit.save(module, str(path), _extra_files=extra)
    return path


# -- 8. configs reconciled with the weights before building ------------------------------------------

def test_a_million_layers_over_three_blocks_is_refused_before_building(tmp_path):
    path = _gpt2_dir(tmp_path / "m", n_layer=1_000_000)
    with pytest.raises(LayoutError, match=r"n_layer = 1000000 contradicts the weights, which imply n_layer = 3"):
        modelport.load_model(path)


@pytest.mark.parametrize("key, value, implied", [("n_embd", 4096, 24), ("vocab_size", 10**7, 37),
                                                 ("n_positions", 10**9, 20), ("n_inner", 10**8, 40)])
def test_sizes_the_weights_contradict_are_refused_naming_key_and_implied_value(tmp_path, key, value, implied):
    path = _gpt2_dir(tmp_path / "m", **{key: value})
    with pytest.raises(LayoutError, match=rf"{key} = {value} contradicts the weights, which imply {key} = {implied}"):
        modelport.load_model(path)


def test_inspect_run_export_and_parity_refuse_the_claimed_layers(tmp_path, cli):
    path = _gpt2_dir(tmp_path / "m", n_layer=1_000_000)
    _one_line_exit_2(cli("inspect", path, "--run"), "n_layer = 1000000", "n_layer = 3")
    _one_line_exit_2(cli("convert", path, tmp_path / "m.onnx"), "n_layer = 1000000")
    assert not (tmp_path / "m.onnx").exists()
    _one_line_exit_2(cli("parity", path, path, "--engine", "reference"), "n_layer = 1000000")
    _one_line_exit_2(cli("parity", path, path, "--engine", "transformers"), "n_layer = 1000000", "n_layer = 3")


def test_a_directory_transformers_runs_is_reconciled_too(tmp_path, cli):
    path = _bert_dir(tmp_path / "b", num_hidden_layers=1_000_000)
    _one_line_exit_2(cli("parity", path, path), "num_hidden_layers = 1000000", "num_hidden_layers = 2")
    path = _bert_dir(tmp_path / "h", hidden_size=8192)
    _one_line_exit_2(cli("parity", path, path), "hidden_size = 8192", "hidden_size = 24")


# -- 9. parity's sizes bounded ----------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [(["--seq-len", "1000000000"], "position table holds 20"),
                                          (["--seq-len", "1e9"], "--seq-len"),
                                          (["--new-tokens", "1000000000"], "position table holds 20"),
                                          (["--batch", "1000000000"], "of memory")])
def test_parity_sizes_past_the_table_or_memory_are_refused(tmp_path, cli, args, needle):
    path = _gpt2_dir(tmp_path / "m")
    r = cli("parity", path, path, "--engine", "reference", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr


def test_an_input_shape_recorded_in_onnx_metadata_is_bounded_by_memory(tmp_path):
    inputs = json.dumps([{"name": "x", "dtype": "float32", "shape": [40000, 40000, 64]}])
    path = _onnx_relu(tmp_path / "big.onnx", {"modelport.kind": "tensor", "modelport.inputs": inputs})
    with pytest.raises(UnsupportedError, match="of memory"):
        modelport.parity(path, path)


def test_an_input_shape_recorded_in_torchscript_metadata_is_bounded_by_memory(tmp_path):
    meta = {"kind": "tensor", "inputs": [{"name": "x", "dtype": "float32", "shape": [40000, 40000, 64]}],
            "outputs": ["output"]}
    path = _torchscript(tmp_path / "big.ts", meta)
    with pytest.raises(UnsupportedError, match="of memory"):
        modelport.parity(path, path)


def test_onnx_and_torchscript_exports_carry_their_position_limit(tmp_path):
    from modelport.convert.export import export
    from modelport.formats.graphmeta import from_onnx
    from modelport.formats.torchscript import read_metadata

    src = _gpt2_dir(tmp_path / "m")
    export(src, tmp_path / "m.onnx", "onnx")
    export(src, tmp_path / "m.ts", "torchscript")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).metadata_props}
    assert from_onnx(props, "m.onnx").max_positions == 20
    assert read_metadata(tmp_path / "m.ts")["max_positions"] == 20
    report = modelport.parity(tmp_path / "m.onnx", tmp_path / "m.ts", new_tokens=16)   # default lengths: clipped
    assert report and max(i["seq_len"] for i in report.to_json()["inputs"]) + report.new_tokens <= 20
    with pytest.raises(UnsupportedError, match="position table holds 20"):
        modelport.parity(tmp_path / "m.onnx", tmp_path / "m.ts", seq_lens=(21,))


# -- 10. embedded metadata validated ----------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("modelport.aliases", "[1, 2, 3]"), ("modelport.constants", "[[1]]"),
                                        ("modelport.aliases", "{not json"), ("modelport.strip_prefix", None),
                                        ("modelport.inputs", '[{"name": "x", "shape": [4]}]'),
                                        ("modelport.inputs", '[{"name": "x", "dtype": "float32", "shape": [-4]}]'),
                                        ("modelport.kind", "rocket")])
def test_onnx_metadata_of_the_wrong_type_is_refused_in_one_line(tmp_path, cli, key, value):
    path = _onnx_relu(tmp_path / "m.onnx", {key: value if value is not None else "x" * 5000})
    with pytest.raises(FormatError, match=key.replace(".", r"\.")):
        with formats.open(path) as src:
            src.names()
    _one_line_exit_2(cli("inspect", path), key)


def test_onnx_vocab_size_that_is_not_a_number_is_refused_when_run(tmp_path, cli):
    path = _onnx_relu(tmp_path / "m.onnx", {"modelport.vocab_size": "lots", "modelport.kind": "causal-lm"})
    with pytest.raises(FormatError, match=r"modelport\.vocab_size = 'lots' is not a positive integer"):
        load_runnable(path)
    _one_line_exit_2(cli("parity", path, path), "modelport.vocab_size")


@pytest.mark.parametrize("meta, key", [({"strip_prefix": 5}, "strip_prefix"),
                                       ({"kind": "tensor", "inputs": [{"name": "x", "shape": [2, 4]}]}, "inputs[0]"),
                                       ({"inputs": "x"}, "inputs"), ({"vocab_size": -1}, "vocab_size"),
                                       ({"max_positions": "many"}, "max_positions"), ([1, 2], "extra/modelport.json")])
def test_torchscript_metadata_of_the_wrong_type_is_refused_in_one_line(tmp_path, cli, meta, key):
    path = _torchscript(tmp_path / "m.ts", meta)
    with pytest.raises(FormatError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_runnable(path, input_shape="2,4")
    _one_line_exit_2(cli("parity", path, path, "--input-shape", "2,4"), key)


# -- 11. corrupt initializers and other libraries' errors --------------------------------------------

def _tensor(dims, values=None, raw: bytes | None = None):
    from onnx import TensorProto

    t = TensorProto(name="b", data_type=TensorProto.FLOAT)
    t.dims.extend(dims)
    if raw is not None:
        t.raw_data = raw
    else:
        t.float_data.extend(values or [])
    return t


@pytest.mark.parametrize("tensor, match", [(lambda: _tensor([-2, 2], raw=b"\0" * 16), "dims"),
                                           (lambda: _tensor([4, 4], [1.0, 2.0, 3.0]), "holds 3 values"),
                                           (lambda: _tensor([1 << 40], []), "holds 0 values")])
def test_corrupt_onnx_initializers_are_refused(tmp_path, cli, tensor, match):
    path = _onnx_relu(tmp_path / "m.onnx", init=tensor())
    with pytest.raises(FormatError, match=match):
        with formats.open(path) as src:
            for name in src.names():
                src.read_bytes(name)
    _one_line_exit_2(cli("convert", path, tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()


def test_onnxruntime_errors_naming_bytes_that_are_not_utf8_are_one_line(tmp_path, cli):
    path = _onnx_relu(tmp_path / "m.onnx", node_name="NODEQQ")
    data = path.read_bytes().replace(b"NODEQQ", b"\xff\xfe\xc3(QQ")     # same length, invalid UTF-8
    path.write_bytes(data.replace(b"Relu", b"Rexu"))                    # and an operator no runtime has
    with pytest.raises(FormatError, match="onnxruntime cannot load the graph") as info:
        load_runnable(path, input_shape="4")
    assert "\ufffd" in str(info.value) and "Rexu" in str(info.value)
    r = cli("parity", path, path, "--input-shape", "4")
    _one_line_exit_2(r, "onnxruntime cannot load the graph")
    assert "EP Error" not in r.stdout + r.stderr


def test_a_malicious_pickle_in_a_transformers_reference_is_refused(tmp_path, cli):
    from .hostile import write_pt_legacy

    path = _bert_dir(tmp_path / "b")
    (path / "model.safetensors").unlink()
    marker = tmp_path / "RAN"
    pkl = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    write_pt_legacy(path / "pytorch_model.bin", pkl)
    _one_line_exit_2(cli("parity", path, path))
    assert not marker.exists()


def test_transformers_errors_are_one_line_and_debug_keeps_their_whole_text(tmp_path, cli):
    path = _bert_dir(tmp_path / "b", intermediate_size=48)       # the weights have 40: transformers refuses
    r = cli("parity", path, path)
    _one_line_exit_2(r, "transformers cannot load this directory", "intermediate.dense.weight: MISMATCH",
                     "torch.Size([40, 24]) vs model:torch.Size([48, 24])")
    assert "LOAD REPORT" not in r.stdout + r.stderr              # its multi-line table is summed up, not printed
    assert len(r.stderr) > 300                                    # not cut at 200 characters
    from modelport.cli import main

    with pytest.raises(ModelportError) as info:                   # --debug: the traceback, with the cause
        main(["--debug", "parity", str(path), str(path)])
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError) and " ".join(str(cause).split()) in str(info.value)


# -- found by the fuzzing of graph files -----------------------------------------------------------

def test_onnx_names_that_are_not_utf8_are_refused(tmp_path):
    path = _onnx_relu(tmp_path / "m.onnx")
    data = path.read_bytes()
    assert data.count(b"B\x01b") == 1                             # TensorProto.name (field 8): "b"
    path.write_bytes(data.replace(b"B\x01b", b"B\x01\xff"))
    with pytest.raises(FormatError, match="not UTF-8"):
        with formats.open(path) as src:
            src.names()


def test_an_empty_or_graphless_onnx_file_is_refused(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    (tmp_path / "g.onnx").write_bytes(b"\x08\x07")                # ir_version 7 and nothing else
    for name in ("e.onnx", "g.onnx"):
        with pytest.raises(FormatError, match="not an ONNX model"):
            formats.open(tmp_path / name, "onnx")


def test_a_torchscript_storage_declared_larger_than_its_member_is_refused_before_torch_loads_it(tmp_path):
    path = _torchscript(tmp_path / "m.ts", {"kind": "tensor"})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    storage = next(n for n in members if n.endswith("/data/0"))
    members[storage] = members[storage][:4]                      # the pickle still declares the full size
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(FormatError, match="declares storage '0' of|reaches element 11 of storage '0'"):
        formats.open(path)


def test_detection_order_does_not_depend_on_which_adapter_was_imported_first():
    import importlib

    importlib.import_module("modelport.formats.pt")               # imported directly, before the registry loads
    ids = [f.id for f in formats._detection_order()]
    assert ids.index("torchscript") < ids.index("pt")
    assert ids == [m for m in formats._MODULES]


def test_a_torchscript_pickle_with_a_memo_bomb_is_refused_before_it_is_unpickled(tmp_path):
    """LONG_BINPUT 174417761 in data.pkl made CPython's unpickler grow its memo to 1.4 GB (10 s)."""
    import time

    path = _torchscript(tmp_path / "m.ts", {"kind": "tensor"})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("/data.pkl"))
    members[name] = members[name][:2] + b"N" + b"r" + (174417761).to_bytes(4, "little") + members[name][2:]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    start = time.monotonic()
    with pytest.raises(FormatError, match="memo index 174417761"):
        formats.open(path, "torchscript")
    assert time.monotonic() - start < 2.0


def test_onnx_dims_larger_than_their_external_data_are_refused_before_reading(tmp_path):
    """dims [2**40] over a 16-byte data file: the read would have asked for 4 TB."""
    from onnx import TensorProto

    t = TensorProto(name="b", data_type=TensorProto.FLOAT, dims=[1 << 40], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "m.onnx.data"), ("offset", "0")):
        t.external_data.add(key=k, value=v)
    (tmp_path / "m.onnx.data").write_bytes(b"\0" * 16)
    path = _onnx_relu(tmp_path / "m.onnx", init=t)
    with pytest.raises(FormatError, match="needs 4398046511104 bytes"):
        with formats.open(path) as src:
            for name in src.names():
                src.read_bytes(name)
