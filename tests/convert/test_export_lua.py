"""Exports of Lua nn models written by real Lua Torch7 (fixtures/t7nn, fixtures/t7; see their READMEs).

The example input follows the model: a DoubleTensor model is traced with float64 values, a model whose
input feeds a LookupTable with Lua's 1-based indices inside the table. Where the file still holds the
buffers of Lua's last forward pass, the exported graph fed Lua's input reproduces Lua's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.convert.export import ExportOptions, export, export_onnx_runnable, export_torchscript_runnable
from modelport.errors import UnsupportedError
from modelport.models.graph import onnx_runnable, torchscript_runnable
from modelport.models.runnable import TENSOR, example_feeds, from_module, load_runnable, lua_input, tensor_input
from modelport.t7.nn import build_module, example_input, lua_array
from modelport.t7.reader import read_t7

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
T7NN, T7 = ROOT / "fixtures" / "t7nn", ROOT / "fixtures" / "t7"
DOUBLE = T7NN / "tracker_unsupervised.net"          # all DoubleTensor, binary
ASCII = T7 / "e-lab-torch7-demos" / "face-detector-elab" / "model.net"


def as_torch(t) -> torch.Tensor:
    return torch.from_numpy(np.array(t.numpy(), copy=True))


def graph_of(fmt: str, path: Path):
    return onnx_runnable(path) if fmt == "onnx" else torchscript_runnable(path)


def test_double_model_exports_in_float64(tmp_path):
    export(DOUBLE, tmp_path / "m.pt", "torchscript", input_shape="3,22,22")
    eager = load_runnable(DOUBLE, input_shape="3,22,22")
    graph = torchscript_runnable(tmp_path / "m.pt")
    assert eager.inputs[0].dtype == graph.inputs[0].dtype == "float64"
    feeds = example_feeds(eager, seed=3)
    assert feeds["input"].dtype == torch.float64
    want, got = eager.run(feeds)["output"], graph.run(feeds)["output"]
    assert want.dtype == got.dtype == torch.float64 and want.shape == (32, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_double_model_to_onnx_says_how_to_export_it_in_float32(tmp_path):
    # onnxruntime has no float64 Conv on CPU: the float64 graph is refused with what to pass
    with pytest.raises(UnsupportedError, match=r"no float64 kernel .*--dtype fp32"):
        export(DOUBLE, tmp_path / "m.onnx", "onnx", input_shape="3,22,22")
    assert not (tmp_path / "m.onnx").exists()
    export(DOUBLE, tmp_path / "m.onnx", "onnx", input_shape="3,22,22", options=ExportOptions(dtype="fp32"))
    graph, eager = onnx_runnable(tmp_path / "m.onnx"), load_runnable(DOUBLE, input_shape="3,22,22")
    assert graph.inputs[0].dtype == "float32"
    feeds = example_feeds(eager, seed=2)
    torch.testing.assert_close(graph.run({"input": feeds["input"].float()})["output"].double(),
                               eager.run(feeds)["output"], rtol=1e-4, atol=1e-5)


def test_ascii_model_exports(tmp_path):
    export(ASCII, tmp_path / "m.onnx", "onnx", input_shape="1,1,32,32")
    graph = onnx_runnable(tmp_path / "m.onnx")
    eager = load_runnable(ASCII, input_shape="1,1,32,32")
    assert graph.inputs[0].dtype == "float32"
    feeds = example_feeds(eager, seed=1)
    torch.testing.assert_close(graph.run(feeds)["output"], eager.run(feeds)["output"], rtol=1e-4, atol=1e-4)


def test_explicit_input_dtype_wins_over_the_models_type():
    assert load_runnable(DOUBLE, input_shape="3,22,22", input_dtype="float32").inputs[0].dtype == "float32"


def word_vectors():
    """The nn.LookupTable (9 words x 100, DoubleTensor) of word2vec_torch's sampler.t7 and its stored output."""
    table = read_t7(T7 / "word2vec_torch" / "sampler.t7").root[b"word_vecs"]
    return build_module(table), as_torch(table.fields[b"output"])


def test_lookup_table_takes_one_based_indices_inside_the_table():
    module, _ = word_vectors()
    assert example_input(module) == (torch.int64, (1, 10))
    spec = lua_input(module, tensor_input("4"), "sampler.t7")
    assert spec.dtype == "int64" and spec.values == (1, 10)
    runnable = from_module(module, kind=TENSOR, origin="Lua LookupTable", input_spec=spec)
    ids = torch.cat([example_feeds(runnable, seed=s)["input"] for s in range(50)])
    assert ids.min().item() == 1 and ids.max().item() == 9


def lua_truth_weight(node):
    """The ``weight`` tensor that real Torch7 loaded for the LookupTable (its .lua-truth.json)."""
    for key, value in node.get("entries", []):
        if key.get("v") == "weight" and value.get("size") == [9, 100]:
            return value
        found = lua_truth_weight(value) if isinstance(value, dict) else None
        if found:
            return found
    return None


@pytest.mark.parametrize("fmt,name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_exported_lookup_table_takes_luas_indices(tmp_path, fmt, name):
    # Lua index 1 is the table's first row, 9 its last: the exported graph returns the rows real Torch7 loads
    src = T7 / "word2vec_torch" / "sampler.t7"
    truth = lua_truth_weight(json.loads(Path(f"{src}.lua-truth.json").read_text())["root"])
    module, _ = word_vectors()
    runnable = from_module(module, kind=TENSOR, origin="Lua LookupTable",
                           input_spec=lua_input(module, tensor_input("2"), src))
    write = export_onnx_runnable if fmt == "onnx" else export_torchscript_runnable
    write(runnable, tmp_path / name, options=ExportOptions(), source_path=src)
    got = graph_of(fmt, tmp_path / name).run({"input": torch.tensor([1, 9])})["output"]
    assert got.dtype == torch.float64 and got.shape == (2, 100)
    assert got[0, :5].tolist() == truth["first5"] and got[1, -5:].tolist() == truth["last5"]
    assert got.sum().item() == pytest.approx(truth["sum"] - module.weight[1:8].sum().item(), abs=1e-9)


@pytest.mark.parametrize("fmt,name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_exported_cuda_model_reproduces_luas_outputs(tmp_path, fmt, name):
    # DeepLearning_HW1's model holds every module's output of a 128-image batch, computed by cunn
    src = T7NN / "deeplearning_hw1_model.t7"
    mods = lua_array(read_t7(src).root.fields[b"modules"])
    x, y = as_torch(mods[0].fields[b"output"]), as_torch(mods[-1].fields[b"output"])
    export(src, tmp_path / name, fmt, input_shape="128,784")
    torch.testing.assert_close(graph_of(fmt, tmp_path / name).run({"input": x})["output"], y, rtol=1e-5, atol=1e-4)


def test_float_weights_with_double_buffers_take_float32():
    # the 2013 face detector: FloatTensor weights, DoubleTensor output buffers; the weights decide
    assert load_runnable(T7NN / "face-detector-new_2013.net", input_shape="1,1,32,32").inputs[0].dtype == "float32"


# -- nngraph gModules of several inputs: --input-shape once per input, in the gModule's order -----------

GMODULE = T7NN / "gmodule_with_linear_identity.t7"     # gModule({a, b}, {CAddTable(){b, Linear(1, 2)(a)}}), Double
CHAR_RNN = T7NN / "as_exam_model.t7"                   # char-rnn unrolled: h0 and x1..x10 in, 10 log-probs out


def test_gmodule_of_several_inputs_runs_with_one_shape_per_input():
    r = load_runnable(GMODULE, input_shape=["2,1", "2,2"])
    assert [(i.name, i.dtype, i.shape) for i in r.inputs] == [("input1", "float64", (2, 1)), ("input2", "float64", (2, 2))]
    assert r.outputs == ("output",)
    with pytest.raises(UnsupportedError, match=r"takes 2 inputs and --input-shape gave 1 shape; give --input-shape once "
                                               r"per input \(2 times\)"):
        load_runnable(GMODULE, input_shape="1,1")
    with pytest.raises(UnsupportedError, match="takes one input and --input-shape gave 2 shapes"):
        load_runnable(T7NN / "u1net.net", input_shape=["1,3,32,32", "1,3,32,32"])


@pytest.mark.parametrize("fmt,name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_exported_gmodule_of_two_inputs_computes_what_its_readme_states(tmp_path, fmt, name):
    # python-torchfile's README gives the Linear's weight and bias as Lua loads them; the gModule adds b
    export(GMODULE, tmp_path / name, fmt, input_shape=["2,1", "2,2"])
    graph = graph_of(fmt, tmp_path / name)
    assert [i.name for i in graph.inputs] == ["input1", "input2"]
    a = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    b = torch.tensor([[10.0, 20.0], [30.0, 40.0]], dtype=torch.float64)
    expect = b + a * torch.tensor([-0.0248373, 0.17503954], dtype=torch.float64) + \
        torch.tensor([0.05159848, -0.25367146], dtype=torch.float64)
    torch.testing.assert_close(graph.run({"input1": a, "input2": b})["output"], expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt,name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_exported_char_rnn_reproduces_luas_stored_outputs(tmp_path, fmt, name):
    # the file holds nngraph's buffers of Lua's last forward pass: the 11 inputs (h0 of 100, ten one-hot
    # characters of 5) and the 10 log-probability outputs; the exported graph, fed them, gives Lua's outputs
    root = read_t7(CHAR_RNN).root
    ins = [as_torch(t) for t in lua_array(root.fields[b"innode"].fields[b"data"][b"input"])]
    outs = [as_torch(t) for t in lua_array(root.fields[b"outnode"].fields[b"data"][b"input"])]
    assert len(ins) == 11 and len(outs) == 10
    export(CHAR_RNN, tmp_path / name, fmt, input_shape=[",".join(map(str, x.shape)) for x in ins])
    graph = graph_of(fmt, tmp_path / name)
    assert graph.outputs == tuple(f"output{k}" for k in range(1, 11))
    got = graph.run({f"input{k}": x for k, x in enumerate(ins, 1)})
    for k, want in enumerate(outs, 1):
        # Lua's LogSoftMax of 2015 used an approximate exp (tests/t7/test_nn_corpus.py): within 2e-4
        torch.testing.assert_close(got[f"output{k}"], want, rtol=0, atol=2e-4)


def test_cli_takes_input_shape_once_per_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "modelport", "convert", GMODULE, tmp_path / "m.onnx",
                             "--input-shape", "2,1", "--input-shape", "2,2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    graph = onnx_runnable(tmp_path / "m.onnx")
    assert [(i.name, i.shape) for i in graph.inputs] == [("input1", (2, 1)), ("input2", (2, 2))]


@pytest.mark.parametrize("src,shape,expect", [
    (T7NN / "unsup-cl-30.net", "1,17", "fails on the example input (input [1, 17] float32)"),
    (GMODULE, "1,1", "takes 2 inputs and --input-shape gave 1 shape"),
])
def test_failed_lua_export_is_exit_2_with_one_line(tmp_path, src, shape, expect):
    result = subprocess.run([sys.executable, "-m", "modelport", "convert", src, tmp_path / "m.pt", "--to",
                             "torchscript", "--input-shape", shape], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and str(src) in lines[0]
    assert not (tmp_path / "m.pt").exists()


def test_threshold_with_a_nonzero_threshold_exports_to_onnx(tmp_path):
    # nn.Threshold(1e-6, 0): torch's own threshold op has no ONNX form unless the threshold is zero
    src = T7NN / "unsup-cl-30.net"
    export(src, tmp_path / "m.onnx", "onnx", input_shape="2,1728")
    eager = load_runnable(src, input_shape="2,1728")
    feeds = example_feeds(eager, seed=4)
    torch.testing.assert_close(onnx_runnable(tmp_path / "m.onnx").run(feeds)["output"], eager.run(feeds)["output"],
                               rtol=1e-4, atol=1e-5)
