"""Real Lua-written nn models (fixtures/t7nn, see its README) rebuilt and run.

Three kinds of evidence:
- rebuilt parameters equal what real Torch7 loads (the ``*.lua-truth.json`` beside each file);
- models run on inputs of the right shape and give outputs of the shape Lua gives;
- where a saved model still holds the buffers of its last forward pass in Lua (module ``output``,
  nngraph ``data.input``), the rebuilt modules, fed the stored inputs, reproduce the stored
  outputs computed by Lua Torch itself.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.errors import UnsupportedError
from modelport.t7.nn import build_module, describe_module, load_lua_model, lua_array
from modelport.t7.objects import LuaObject, T7Tensor
from modelport.t7.reader import read_t7

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "t7nn"


@lru_cache(maxsize=None)
def root(name: str):
    return read_t7(FIX / name).root


def field(o, *keys):
    """Follow Lua field names and 1-based array indices from an object or table."""
    for k in keys:
        table = o.fields if isinstance(o, LuaObject) else o
        o = table[float(k)] if isinstance(k, int) else table[k.encode()]
    return o


def as_torch(t: T7Tensor) -> torch.Tensor:
    return torch.from_numpy(np.array(t.numpy(), copy=True))


# ------------------------------------------------------------------------------------------
# Parameters against what real Torch7 loads


class Truth:
    def __init__(self, name: str):
        self.doc = json.loads((FIX / f"{name}.lua-truth.json").read_text())
        self.by_id = {}
        self._index(self.doc["root"])

    def _index(self, node):
        if isinstance(node, dict):
            if node.get("t") in ("object", "table", "tensor", "storage") and "id" in node:
                self.by_id.setdefault(node["id"], node)
            for k, v in node.get("entries", []):
                self._index(k)
                self._index(v)
            if isinstance(node.get("storage"), dict):
                self._index(node["storage"])

    def get(self, node, key):
        for k, v in node["entries"]:
            if k.get("v") == key:
                return self.by_id[v["id"]] if v.get("t") == "ref" else v
        raise KeyError(key)


def leaf_params(truth: Truth, tnode, module: torch.nn.Module, path: str):
    """(path, rebuilt parameter, truth tensor) for every weight/bias under an nn container."""
    keys = {k.get("v") for k, _ in tnode["entries"]}
    if "modules" in keys:
        table = truth.get(tnode, "modules")
        for i in range(1, table["n"] + 1):
            yield from leaf_params(truth, truth.get(table, i), module[i - 1], f"{path}.modules[{i}]")
        return
    for name in ("weight", "bias"):
        if name in keys:
            yield f"{path}.{name}", getattr(module, name), truth.get(tnode, name)


def assert_matches_truth(param: torch.Tensor, t: dict, where: str):
    got = param.detach().double().reshape(-1).numpy()
    assert got.size == t["numel"], where
    f32 = param.dtype == torch.float32
    cast = (lambda v: np.float32(v)) if f32 else (lambda v: np.float64(v))
    if "values" in t:
        np.testing.assert_array_equal(got.astype(param.detach().numpy().dtype), [cast(v) for v in t["values"]], where)
    else:
        np.testing.assert_array_equal(got[:5], [cast(v) for v in t["first5"]], where)
        np.testing.assert_array_equal(got[-5:], [cast(v) for v in t["last5"]], where)
    assert cast(got.min()) == cast(t["min"]) and cast(got.max()) == cast(t["max"]), where
    assert got.sum() == pytest.approx(t["sum"], rel=1e-9, abs=1e-9), where


# the ASCII face detector is the reader's fixture (fixtures/t7, provenance in its README)
FACE_ASCII = "../t7/e-lab-torch7-demos/face-detector-elab/model.net"
SEQUENTIAL_FILES = ["u1net.net", "unsup-cl-30.net", "deeplearning_hw1_model.t7", "face-detector-new_2013.net",
                    FACE_ASCII]


@pytest.mark.parametrize("name", SEQUENTIAL_FILES)
def test_rebuilt_parameters_equal_lua_truth(name):
    model = load_lua_model(FIX / name)
    truth = Truth(name)
    checked = list(leaf_params(truth, truth.doc["root"], model, "model"))
    assert len(checked) >= 2
    for where, param, t in checked:
        assert_matches_truth(param, t, f"{name}: {where}")


def test_flattened_cuda_parameters_come_from_their_offsets():
    # every parameter is a view into one CudaStorage (getParameters): bias at storageOffset 50177
    lua = field(root("deeplearning_hw1_model.t7"), "modules", 2, "bias")
    assert lua.class_name == "torch.CudaTensor" and lua.offset == 50176
    model = load_lua_model(FIX / "deeplearning_hw1_model.t7")
    flat = lua.storage.data
    np.testing.assert_array_equal(model[1].weight.detach().numpy().reshape(-1), flat[:50176])
    np.testing.assert_array_equal(model[1].bias.detach().numpy(), flat[50176:50240])
    assert model[1].weight.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Running on correctly shaped inputs


def test_road_net_u1net_runs_on_images_and_batches():
    model = load_lua_model(FIX / "u1net.net")
    x = torch.randn(2, 3, 46, 46, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 12, 19, 19)                  # conv 9x9 -> 38, max-pool 2 -> 19
        torch.testing.assert_close(model(x[1]), y[1])       # a (C, H, W) image as Lua takes it
        conv = torch.nn.functional.conv2d(x, model[0].weight, model[0].bias)
        torch.testing.assert_close(y, torch.nn.functional.max_pool2d(conv, 2))


def test_road_net_classifier_runs_on_vectors_and_batches():
    model = load_lua_model(FIX / "unsup-cl-30.net")          # Reshape(1728), Linear, Threshold, Linear, LogSoftMax
    x = torch.randn(3, 1728, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 8)
        torch.testing.assert_close(y.exp().sum(1), torch.ones(3))
        torch.testing.assert_close(model(x[0]), y[0])
        torch.testing.assert_close(model(x.reshape(3, 12, 12, 12)), y)     # Reshape keeps the batch


def test_face_detector_2013_runs_on_a_32x32_patch():
    model = load_lua_model(FIX / "face-detector-new_2013.net")
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (4, 2)
        torch.testing.assert_close(model(x[2]), y[2])       # (1, 32, 32): Reshape(64) sees 64 elements
    assert "nn.SpatialConvolutionMM -> Conv2d(8, 64, kernel_size=(7, 7)" in describe_module(model)
    assert describe_module(model).endswith("total: 25,490 parameters (float32)")


def test_ascii_face_detector_with_flattened_parameters_runs():
    model = load_lua_model(FIX / FACE_ASCII)
    x = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2,)
        torch.testing.assert_close(y.exp().sum(), torch.tensor(1.0))
        torch.testing.assert_close(model(x[None])[0], y)


def test_gmodule_with_linear_identity_as_its_readme_states():
    model = load_lua_model(FIX / "gmodule_with_linear_identity.t7")   # gModule({a, b}, {CAddTable(){b, Linear(a)}})
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
    np.testing.assert_allclose(linear.weight.detach().numpy(), [[-0.0248373], [0.17503954]], rtol=1e-6)
    np.testing.assert_allclose(linear.bias.detach().numpy(), [0.05159848, -0.25367146], rtol=1e-6)
    a = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    b = torch.tensor([[10.0, 20.0], [30.0, 40.0]], dtype=torch.float64)
    expect = b + a * torch.tensor([-0.0248373, 0.17503954], dtype=torch.float64) + \
        torch.tensor([0.05159848, -0.25367146], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), expect, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(model([a, b]), model(a, b))


# ------------------------------------------------------------------------------------------
# Against outputs computed by Lua Torch (buffers of the last forward pass saved in the file)


def test_deeplearning_hw1_reproduces_lua_outputs_whole_and_layer_by_layer():
    lua_root = root("deeplearning_hw1_model.t7")
    mods = lua_array(field(lua_root, "modules"))
    outputs = [as_torch(field(m, "output")) for m in mods]       # computed on a GPU by cutorch/cunn
    model = load_lua_model(FIX / "deeplearning_hw1_model.t7")
    with torch.no_grad():
        # View(784) returns a view of its input, so its stored output is the model's input, reshaped
        torch.testing.assert_close(model(outputs[0]), outputs[-1], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model(outputs[0].reshape(128, 1, 28, 28)), outputs[-1], rtol=1e-5, atol=1e-4)
        for i in range(1, len(mods)):
            torch.testing.assert_close(model[i](outputs[i - 1]), outputs[i], rtol=1e-5, atol=1e-4,
                                       msg=lambda m, i=i: f"modules[{i + 1}]: {m}")


def test_face_detector_2011_layers_reproduce_lua_outputs():
    # modules[1] (SpatialNormalization) and modules[9] (SpatialClassifier) no longer exist in nn;
    # every other layer is checked against the output Lua stored, fed the previous layer's output.
    lua_root = root("face-detector_2011.net")
    with pytest.raises(UnsupportedError, match=r"modules\[1\] \(nn.SpatialNormalization\)"):
        build_module(lua_root)
    mods = lua_array(field(lua_root, "modules"))
    classes = []
    with torch.no_grad():
        for i in range(1, 8):                                   # SpatialConvolution .. Tanh
            x, expect = as_torch(field(mods[i - 1], "output")), as_torch(field(mods[i], "output"))
            torch.testing.assert_close(build_module(mods[i])(x), expect, rtol=1e-12, atol=1e-12)
            classes.append(mods[i].class_name)
        classifier = field(mods[8], "classifier")               # nn.Linear applied to the 32 features
        x = as_torch(field(mods[7], "output")).reshape(1, 32)
        torch.testing.assert_close(build_module(classifier)(x), as_torch(field(classifier, "output")),
                                   rtol=1e-12, atol=1e-12)
    assert classes == ["nn.SpatialConvolution", "nn.Tanh", "nn.Abs", "nn.SpatialSubSampling", "nn.Tanh",
                       "nn.SpatialConvolutionMap", "nn.Tanh"]


def lua_exp_minus_approx(x: torch.Tensor) -> torch.Tensor:
    """TH's THExpMinusApprox, the exp(-x) that Lua's LogSoftMax used in 2015."""
    y = 1.0 + x * (0.125 + x * (0.0078125 + x * (0.00032552083 + x * 1.0172526e-5)))
    return torch.where(x < 13.0, 1.0 / y**8, torch.zeros_like(x))


def gmodule_nodes(gm):
    for node in lua_array(field(gm, "forwardnodes")):
        data = field(node, "data")
        module = data.get(b"module")
        if module is not None:
            yield data, module


def test_char_rnn_gmodule_nodes_reproduce_lua_outputs():
    # every module node of the unrolled char-rnn (and of its 10 nested step gModules), fed the
    # inputs nngraph stored in data.input, gives the output Lua stored in module.output
    checked: dict[str, int] = {}

    def visit(gm):
        for data, module in gmodule_nodes(gm):
            if module.class_name == "nn.gModule":
                visit(module)
                continue
            ins = [as_torch(t) for t in lua_array(data[b"input"])]
            parts = lua_array(field(module, "modules")) if module.class_name == "nn.Sequential" else [module]
            x = ins[0] if len(ins) == 1 else ins
            for part in parts:
                y = build_module(part)(x)
                stored = as_torch(field(part, "output"))
                if part.class_name == "nn.LogSoftMax":
                    # Lua's LogSoftMax of 2015 used an approximate exp: its stored output is
                    # reproduced by that approximation, and differs from the exact one by < 2e-4
                    m = x.max()
                    approx = x - m - torch.log(lua_exp_minus_approx(m - x).sum())
                    torch.testing.assert_close(approx, stored, rtol=0, atol=1e-12)
                    torch.testing.assert_close(y, stored, rtol=0, atol=2e-4)
                else:
                    torch.testing.assert_close(y, stored, rtol=0, atol=1e-12)
                checked[part.class_name] = checked.get(part.class_name, 0) + 1
                x = stored

    with torch.no_grad():
        visit(root("as_exam_model.t7"))
    assert checked == {"nn.Identity": 11, "nn.Linear": 30, "nn.CAddTable": 10, "nn.Tanh": 10, "nn.LogSoftMax": 10}


def test_char_rnn_gmodule_whole_graph_reproduces_lua_outputs():
    lua_root = root("as_exam_model.t7")
    inputs = [as_torch(t) for t in lua_array(field(lua_root, "innode", "data", "input"))]     # h0, x1..x10
    outputs = [as_torch(t) for t in lua_array(field(lua_root, "outnode", "data", "input"))]   # 10 log-probs
    assert len(inputs) == 11 and len(outputs) == 10
    model = load_lua_model(FIX / "as_exam_model.t7")
    with torch.no_grad():
        got = model(*inputs)
    assert len(got) == 10
    for y, expect in zip(got, outputs):
        torch.testing.assert_close(y, expect, rtol=0, atol=2e-4)     # see the approximate exp above


def test_char_rnn_clones_share_one_parameter_per_lua_weight():
    # the ten time steps are clone('weight', 'bias')s of one step: Lua holds their weights once
    model = load_lua_model(FIX / "as_exam_model.t7")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 30
    assert len({id(m.weight) for m in linears}) == 3
    assert sum(p.numel() for p in model.parameters()) == 11_205
    assert sum(m.weight is linears[0].weight for m in linears) == 10


def test_lp_pooling_of_2014_reproduces_lua_outputs():
    # tracker_unsupervised.net's SpatialLPPooling holds its sub-sampling weight as (n, kH, kW); TH read
    # the first n values. Square -> SpatialSubSampling -> Sqrt, each fed the previous stored output.
    mods = lua_array(field(root("tracker_unsupervised.net"), "modules"))
    checked = 0
    with torch.no_grad():
        for pool in (mods[2], mods[5]):
            square, sub, sqrt = lua_array(field(pool, "modules"))
            assert tuple(field(sub, "weight").size) == (32, 2, 2)
            x = as_torch(field(square, "output"))
            torch.testing.assert_close(build_module(sub)(x), as_torch(field(sub, "output")), rtol=0, atol=1e-12)
            torch.testing.assert_close(build_module(sqrt)(as_torch(field(sub, "output"))),
                                       as_torch(field(sqrt, "output")), rtol=0, atol=1e-12)
            checked += 1
    assert checked == 2
