"""Lua nn modules rebuilt as PyTorch: each against a reference written from Lua's semantics.

References are numpy loops or formulas written here from the Lua nn source semantics, not the
code under test. Real Lua-written models are in test_nn_corpus.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelport.errors import FormatError, UnsupportedError
from modelport.t7 import nn as t7nn
from modelport.t7.nn import build_module, describe_module
from modelport.t7.objects import T7Storage, T7Tensor
from tests.t7.luabuild import array, data, long_storage, node, obj, rng, run, tensor, xcorr_ref



# ------------------------------------------------------------------------------------------
# Linear, flattened parameters


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_xwt_plus_b_for_vectors_and_batches(with_bias):
    r = rng(1)
    w = r.standard_normal((5, 3))
    b = r.standard_normal(5)
    fields = {"weight": tensor(w)}
    if with_bias:
        fields["bias"] = tensor(b)
    m = build_module(obj("nn.Linear", **fields))
    x = r.standard_normal((4, 3))
    expect = x @ w.T + (b if with_bias else 0)
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-12)
    np.testing.assert_allclose(run(m, x[1]), expect[1], rtol=1e-12)      # Lua takes a 1-D vector
    assert (m.bias is not None) == with_bias
    assert m.weight.dtype == torch.float64


def test_parameters_sliced_out_of_one_flat_storage():
    # the layout getParameters() leaves: weight then bias of two layers in one storage
    r = rng(2)
    flat = r.standard_normal(7 * 4 + 7 + 3 * 7 + 3).astype(np.float32)
    store = T7Storage("torch.FloatStorage", "float32", flat)
    l1 = obj("nn.Linear", weight=tensor(flat[:28].reshape(7, 4), store, 0), bias=tensor(flat[28:35], store, 28))
    l2 = obj("nn.Linear", weight=tensor(flat[35:56].reshape(3, 7), store, 35), bias=tensor(flat[56:], store, 56))
    m = build_module(obj("nn.Sequential", modules=array(l1, l2)))
    np.testing.assert_array_equal(m[0].bias.detach().numpy(), flat[28:35])
    np.testing.assert_array_equal(m[1].weight.detach().numpy(), flat[35:56].reshape(3, 7))
    np.testing.assert_array_equal(m[1].bias.detach().numpy(), flat[56:])
    m[0].weight.data.zero_()                     # a copy, not a view of the file's storage
    assert flat[:28].any()


def test_transposed_weight_view_is_read_through_its_strides():
    r = rng(3)
    base = r.standard_normal((4, 6))                       # storage holds W^T
    store = T7Storage("torch.DoubleStorage", "float64", base.reshape(-1).copy())
    w_view = T7Tensor("torch.DoubleTensor", "float64", (6, 4), (1, 6), 0, store)
    m = build_module(obj("nn.Linear", weight=w_view, bias=tensor(np.zeros(6))))
    np.testing.assert_array_equal(m.weight.detach().numpy(), base.T)


# ------------------------------------------------------------------------------------------
# Convolution


def test_spatial_convolution_4d_weight_padding_stride():
    r = rng(4)
    w, b = r.standard_normal((5, 3, 3, 2)), r.standard_normal(5)        # (nOut, nIn, kH, kW)
    m = build_module(obj("nn.SpatialConvolution", weight=tensor(w), bias=tensor(b), nInputPlane=3, nOutputPlane=5,
                         kW=2, kH=3, dW=2, dH=1, padW=1, padH=2))
    x = r.standard_normal((2, 3, 7, 8))
    got = run(m, x)
    for n in range(2):
        np.testing.assert_allclose(got[n], xcorr_ref(x[n], w, b, (1, 2), (2, 1)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(run(m, x[0]), got[0], rtol=1e-12)        # Lua takes a (C, H, W) image


def test_spatial_convolution_mm_2d_weight_equals_conv2d_with_reshaped_weight():
    r = rng(5)
    w2d = r.standard_normal((4, 3 * 3 * 2)).astype(np.float32)           # (nOut, nIn*kH*kW)
    b = r.standard_normal(4).astype(np.float32)
    m = build_module(obj("nn.SpatialConvolutionMM", weight=tensor(w2d), bias=tensor(b), nInputPlane=3,
                         nOutputPlane=4, kW=2, kH=3, dW=1, dH=1, padW=0, padH=1))
    x = torch.from_numpy(r.standard_normal((1, 3, 6, 5)).astype(np.float32))
    expect = F.conv2d(x, torch.from_numpy(w2d).reshape(4, 3, 3, 2), torch.from_numpy(b), padding=(1, 0))
    torch.testing.assert_close(m(x).detach(), expect, rtol=0, atol=0)
    np.testing.assert_allclose(m(x).detach().numpy()[0],
                               xcorr_ref(x[0].double().numpy(), w2d.reshape(4, 3, 3, 2), b, (1, 1), (1, 0)),
                               rtol=1e-5, atol=1e-5)


def test_old_convolution_padding_field_and_no_bias():
    r = rng(6)
    w = r.standard_normal((2, 1, 3, 3))
    m = build_module(obj("nn.SpatialConvolution", weight=tensor(w), nInputPlane=1, nOutputPlane=2,
                         kW=3, kH=3, dW=1, dH=1, padding=1))
    x = r.standard_normal((1, 5, 5))
    np.testing.assert_allclose(run(m, x), xcorr_ref(x, w, np.zeros(2), (1, 1), (1, 1)), rtol=1e-10, atol=1e-12)
    assert m.bias is None


def test_convolution_weight_of_the_wrong_size_is_a_format_error():
    with pytest.raises(FormatError, match="weight.*expected 54"):
        build_module(obj("nn.SpatialConvolutionMM", weight=tensor(np.zeros((2, 26))), bias=tensor(np.zeros(2)),
                         nInputPlane=3, nOutputPlane=2, kW=3, kH=3))


# ------------------------------------------------------------------------------------------
# Pooling


def lua_out_size(size, k, d, pad, ceil):
    """THNN's output size, with its 'last window starts inside the image' correction."""
    n = (size - k + 2 * pad) / d
    out = int(np.ceil(n) if ceil else np.floor(n)) + 1
    if pad and (out - 1) * d >= size + pad:
        out -= 1
    return out


def max_pool_ref(x, k, d, pad, ceil):
    c, h, w = x.shape
    oh, ow = lua_out_size(h, k[0], d[0], pad[0], ceil), lua_out_size(w, k[1], d[1], pad[1], ceil)
    out = np.empty((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * d[0] - pad[0], j * d[1] - pad[1]
            win = x[:, max(h0, 0):min(h0 + k[0], h), max(w0, 0):min(w0 + k[1], w)]
            out[:, i, j] = win.reshape(c, -1).max(axis=1)
    return out


def avg_pool_ref(x, k, d, pad, ceil, include_pad):
    c, h, w = x.shape
    oh, ow = lua_out_size(h, k[0], d[0], pad[0], ceil), lua_out_size(w, k[1], d[1], pad[1], ceil)
    out = np.empty((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * d[0] - pad[0], j * d[1] - pad[1]
            he, we = min(hs + k[0], h + pad[0]), min(ws + k[1], w + pad[1])
            pool = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            div = pool if include_pad else (he - hs) * (we - ws)
            out[:, i, j] = x[:, hs:he, ws:we].reshape(c, -1).sum(axis=1) / div
    return out


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("pad", [(0, 0), (1, 1)])
def test_max_pooling_ceil_mode_on_odd_sizes(ceil, pad):
    r = rng(7)
    x = r.standard_normal((3, 7, 9))
    m = build_module(obj("nn.SpatialMaxPooling", kW=3, kH=2, dW=2, dH=2, padW=pad[1], padH=pad[0], ceil_mode=ceil))
    expect = max_pool_ref(x, (2, 3), (2, 2), pad, ceil)
    got = run(m, x)
    assert got.shape == expect.shape
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(run(m, x[None])[0], expect)


def test_max_pooling_ceil_adds_a_window():
    m = build_module(obj("nn.SpatialMaxPooling", kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=True))
    assert run(m, np.zeros((1, 5, 5))).shape == (1, 3, 3)


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("ceil", [False, True])
def test_average_pooling_count_include_pad_as_lua(include_pad, ceil):
    r = rng(8)
    x = r.standard_normal((2, 7, 8))
    m = build_module(obj("nn.SpatialAveragePooling", kW=3, kH=3, dW=2, dH=2, padW=1, padH=1,
                         ceil_mode=ceil, count_include_pad=include_pad, divide=True))
    expect = avg_pool_ref(x, (3, 3), (2, 2), (1, 1), ceil, include_pad)
    got = run(m, x)
    assert got.shape == expect.shape
    np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_average_pooling_written_without_divide_sums():
    # Lua: "if not self.divide then output:mul(kW*kH)"; old files have no ceil_mode either
    x = rng(9).standard_normal((1, 4, 4))
    m = build_module(obj("nn.SpatialAveragePooling", kW=2, kH=2, dW=2, dH=2))
    expect = x.reshape(1, 2, 2, 2, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Batch normalisation


def bn_fields(r, n, dtype=np.float64):
    return dict(weight=r.standard_normal(n).astype(dtype), bias=r.standard_normal(n).astype(dtype),
                mean=r.standard_normal(n).astype(dtype), var=(r.random(n) + 0.5).astype(dtype))


def test_batch_normalization_v2_matches_formula_for_batches_and_single_vectors():
    r = rng(10)
    p = bn_fields(r, 6)
    m = build_module(obj("nn.BatchNormalization", version=2, weight=tensor(p["weight"]), bias=tensor(p["bias"]),
                         running_mean=tensor(p["mean"]), running_var=tensor(p["var"]), eps=1e-3, affine=True))
    x = r.standard_normal((4, 6))
    expect = (x - p["mean"]) / np.sqrt(p["var"] + 1e-3) * p["weight"] + p["bias"]
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-12)
    np.testing.assert_allclose(run(m, x[2]), expect[2], rtol=1e-12)       # eval-mode Lua takes (C,)


def test_batch_normalization_v1_running_std_equals_v2_running_var():
    r = rng(11)
    p = bn_fields(r, 5)
    eps = 1e-5
    common = dict(weight=tensor(p["weight"]), bias=tensor(p["bias"]), running_mean=tensor(p["mean"]), eps=eps)
    v2 = build_module(obj("nn.SpatialBatchNormalization", version=2, running_var=tensor(p["var"]), **common))
    v1 = build_module(obj("nn.SpatialBatchNormalization", version=1,
                          running_std=tensor(1.0 / np.sqrt(p["var"] + eps)), **common))
    x = r.standard_normal((2, 5, 3, 4))
    expect = ((x - p["mean"][:, None, None]) / np.sqrt(p["var"][:, None, None] + eps) * p["weight"][:, None, None]
              + p["bias"][:, None, None])
    np.testing.assert_allclose(run(v2, x), expect, rtol=1e-10)
    np.testing.assert_allclose(run(v1, x), run(v2, x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run(v1, x[1]), expect[1], rtol=1e-9)       # (C, H, W) image


def test_batch_normalization_without_affine():
    r = rng(12)
    p = bn_fields(r, 3, np.float32)
    m = build_module(obj("nn.SpatialBatchNormalization", version=2, running_mean=tensor(p["mean"]),
                         running_var=tensor(p["var"]), eps=1e-5, affine=False))
    x = r.standard_normal((1, 3, 2, 2)).astype(np.float32)
    expect = (x - p["mean"][:, None, None]) / np.sqrt(p["var"][:, None, None] + 1e-5)
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-5)
    assert m.weight is None and sum(q.numel() for q in m.parameters()) == 0


def test_batch_normalization_without_any_variance_is_a_format_error():
    with pytest.raises(FormatError, match="running_var nor running_std"):
        build_module(obj("nn.BatchNormalization", version=2, running_mean=tensor(np.zeros(3)), eps=1e-5))


# ------------------------------------------------------------------------------------------
# Activations, softmax, dropout


def test_relu_threshold_tanh_sigmoid():
    x = np.linspace(-2, 2, 21)
    np.testing.assert_array_equal(run(build_module(obj("nn.ReLU", threshold=0, val=0)), x), np.where(x > 0, x, 0))
    th = build_module(obj("nn.Threshold", threshold=0.5, val=-3))
    np.testing.assert_array_equal(run(th, x), np.where(x > 0.5, x, -3.0))
    np.testing.assert_allclose(run(build_module(obj("nn.Tanh")), x), np.tanh(x), rtol=1e-14)
    np.testing.assert_allclose(run(build_module(obj("nn.Sigmoid")), x), 1 / (1 + np.exp(-x)), rtol=1e-14)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("shape,axis", [((5,), 0), ((3, 5), 1), ((4, 2, 3), 0), ((2, 4, 2, 3), 1)])
def test_softmax_and_logsoftmax_use_luas_dimension(shape, axis):
    x = rng(13).standard_normal(shape)
    np.testing.assert_allclose(run(build_module(obj("nn.SoftMax")), x), np_softmax(x, axis), rtol=1e-12)
    np.testing.assert_allclose(run(build_module(obj("nn.LogSoftMax")), x), np.log(np_softmax(x, axis)), rtol=1e-12)


def test_dropout_eval_v2_is_identity_and_v1_scales():
    x = rng(14).standard_normal((3, 4))
    np.testing.assert_array_equal(run(build_module(obj("nn.Dropout", p=0.3, v2=True, train=True)), x), x)
    np.testing.assert_allclose(run(build_module(obj("nn.Dropout", p=0.3, v2=False)), x), x * 0.7, rtol=1e-15)
    np.testing.assert_allclose(run(build_module(obj("nn.Dropout", p=0.25)), x), x * 0.75, rtol=1e-15)  # pre-v2 file


def test_dropout_with_stochastic_inference_is_refused():
    with pytest.raises(UnsupportedError, match="stochastic_inference"):
        build_module(obj("nn.Dropout", p=0.5, v2=True, stochastic_inference=True))


# ------------------------------------------------------------------------------------------
# View, Reshape, LookupTable


def view(size, **extra):
    return build_module(obj("nn.View", size=long_storage(size), **extra))


def test_view_batch_rules():
    x = np.arange(2 * 3 * 4, dtype=np.float64)
    assert run(view([24]), x).shape == (24,)
    assert run(view([12]), x.reshape(2, 12)).shape == (2, 12)
    assert run(view([12]), x.reshape(2, 3, 4)).shape == (2, 12)           # 24 = 2 x 12: a batch of 2
    assert run(view([-1, 4]), x.reshape(2, 12)).shape == (6, 4)            # -1: never a batch
    assert run(view([3, 4], numInputDims=2), x.reshape(2, 3, 4)).shape == (2, 3, 4)
    assert run(view([12], numInputDims=2), x.reshape(2, 3, 4)).shape == (2, 12)
    assert run(view([12], numInputDims=2), x[:12].reshape(3, 4)).shape == (12,)
    np.testing.assert_array_equal(run(view([12]), x.reshape(2, 3, 4)), x.reshape(2, 12))
    with pytest.raises(ValueError, match="do not match"):
        run(view([5]), x)


def test_reshape_batch_rules():
    x = np.arange(12, dtype=np.float64)

    def reshape(size, **extra):
        return build_module(obj("nn.Reshape", size=long_storage(size), nelement=int(np.prod(size)), **extra))

    assert run(reshape([3, 4]), x).shape == (3, 4)
    assert run(reshape([3, 4]), x.reshape(2, 6)).shape == (3, 4)           # nelement matches, size(1) != 1
    assert run(reshape([3, 4]), x.reshape(1, 12)).shape == (1, 3, 4)       # size(1) == 1: a batch of one
    assert run(reshape([2, 3]), x.reshape(2, 6)).shape == (2, 2, 3)        # 12 != 6: batch
    assert run(reshape([3, 4], batchMode=False), x.reshape(1, 12)).shape == (3, 4)
    assert run(reshape([6], batchMode=True), x.reshape(2, 6)).shape == (2, 6)


def test_lookup_table_takes_one_based_indices():
    w = rng(15).standard_normal((6, 3))
    m = build_module(obj("nn.LookupTable", version=4, weight=tensor(w), paddingValue=0))
    np.testing.assert_array_equal(run(m, np.array([1, 6, 3])), w[[0, 5, 2]])
    np.testing.assert_array_equal(run(m, np.array([[2.0, 2.0], [1.0, 4.0]])), w[[[1, 1], [0, 3]]])  # Lua DoubleTensor
    with pytest.raises(IndexError, match="1-based"):
        run(m, np.array([0, 1]))
    with pytest.raises(IndexError, match="1-based"):
        run(m, np.array([7]))


# ------------------------------------------------------------------------------------------
# Containers and tables


def test_containers_and_table_modules():
    r = rng(16)
    w1, w2 = r.standard_normal((2, 3)), r.standard_normal((4, 3))
    l1 = obj("nn.Linear", weight=tensor(w1), bias=tensor(np.zeros(2)))
    l2 = obj("nn.Linear", weight=tensor(w2), bias=tensor(np.zeros(4)))
    x = r.standard_normal((5, 3))
    concat = build_module(obj("nn.Concat", dimension=2, modules=array(l1, l2)))
    np.testing.assert_allclose(run(concat, x), np.concatenate([x @ w1.T, x @ w2.T], axis=1), rtol=1e-12)
    table = build_module(obj("nn.ConcatTable", modules=array(obj("nn.Identity"), obj("nn.Tanh"))))
    with torch.no_grad():
        a, b = table(torch.from_numpy(x))
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_allclose(b.numpy(), np.tanh(x), rtol=1e-14)
    par = build_module(obj("nn.ParallelTable", modules=array(obj("nn.Sigmoid"), obj("nn.Identity"))))
    add = build_module(obj("nn.CAddTable"))
    y = r.standard_normal((5, 3))
    with torch.no_grad():
        out = add(par([torch.from_numpy(x), torch.from_numpy(y)]))
    np.testing.assert_allclose(out.numpy(), 1 / (1 + np.exp(-x)) + y, rtol=1e-14)


def test_shared_module_object_is_built_once():
    lin = obj("nn.Linear", weight=tensor(np.eye(2)), bias=tensor(np.zeros(2)))
    m = build_module(obj("nn.Sequential", modules=array(lin, lin)))
    assert m[0] is m[1]


# ------------------------------------------------------------------------------------------
# nngraph, built by hand: one input x, outputs {tanh(x), Linear(x) + x}


def test_gmodule_by_hand_with_two_outputs():
    r = rng(17)
    w, b = r.standard_normal((3, 3)), r.standard_normal(3)
    d_in = data()
    d_x = data(d_in, module=obj("nn.Identity"))
    d_tanh = data(d_x, module=obj("nn.Tanh"))
    d_lin = data(d_x, module=obj("nn.Linear", weight=tensor(w), bias=tensor(b)))
    d_add = data(d_lin, d_x, module=obj("nn.CAddTable"))
    d_out = data(d_tanh, d_add)
    nodes = [node(d) for d in (d_in, d_x, d_lin, d_tanh, d_add, d_out)]
    gm = obj("nn.gModule", forwardnodes=array(*nodes), innode=nodes[0], outnode=nodes[-1], nInputs=1)
    m = build_module(gm)
    x = r.standard_normal((2, 3))
    with torch.no_grad():
        t, s = m(torch.from_numpy(x))
    np.testing.assert_allclose(t.numpy(), np.tanh(x), rtol=1e-14)
    np.testing.assert_allclose(s.numpy(), x @ w.T + b + x, rtol=1e-12)


def test_gmodule_out_of_order_nodes_are_a_format_error():
    d_in = data()
    d_x = data(d_in, module=obj("nn.Identity"))
    d_out = data(d_x)
    nodes = [node(d) for d in (d_in, d_out, d_x)]
    gm = obj("nn.gModule", forwardnodes=array(*nodes), innode=nodes[0], outnode=nodes[1], nInputs=1)
    with pytest.raises(FormatError, match="topological"):
        build_module(gm)


# ------------------------------------------------------------------------------------------
# Registry, errors, describe


def test_unknown_class_names_the_class_and_its_path():
    model = obj("nn.Sequential", modules=array(obj("nn.Identity"), obj("nn.Sequential",
                                                                        modules=array(obj("nn.Tanh"), obj("nn.Foo")))))
    with pytest.raises(UnsupportedError, match=r"modules\[2\]\.modules\[2\] \(nn\.Foo\)"):
        build_module(model, source="net.t7")
    with pytest.raises(UnsupportedError, match=r"^net\.t7: "):
        build_module(model, source="net.t7")


def test_missing_field_names_it():
    with pytest.raises(FormatError, match=r"modules\[1\] \(nn\.Linear\): field 'weight' is missing"):
        build_module(obj("nn.Sequential", modules=array(obj("nn.Linear"))))


def test_a_module_that_contains_itself_is_a_format_error():
    seq = obj("nn.Sequential", modules=array(obj("nn.Identity")))
    seq.fields[b"modules"][2.0] = seq
    with pytest.raises(FormatError, match=r"modules\[2\] \(nn.Sequential\): the module contains itself"):
        build_module(seq)


def test_registering_a_class_twice_raises():
    assert "nn.Linear" in t7nn.supported_classes()
    with pytest.raises(ValueError, match="already registered"):
        t7nn.register("nn.Linear")(lambda o, f: None)


def test_describe_lists_the_tree_with_parameter_counts():
    lin = obj("nn.Linear", weight=tensor(np.zeros((4, 3), np.float32)), bias=tensor(np.zeros(4, np.float32)))
    m = build_module(obj("nn.Sequential", modules=array(lin, obj("nn.ReLU", threshold=0, val=0))))
    text = describe_module(m)
    assert text.splitlines()[0].startswith("nn.Sequential -> Sequential")
    assert "(0) nn.Linear -> Linear(in_features=3, out_features=4, bias=True)  16 params" in text
    assert "(1) nn.ReLU -> ReLU" in text
    assert text.splitlines()[-1] == "total: 16 parameters (float32)"


def test_rebuilt_model_is_in_eval_mode():
    m = build_module(obj("nn.Sequential", modules=array(obj("nn.Dropout", p=0.5, v2=True, train=True))))
    assert not m.training and not m[0].training
