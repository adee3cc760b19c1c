"""Lua nn table modules, slicing, more activations, padding and transposed/dilated convolutions, rebuilt
as PyTorch: each against a reference written from Lua's semantics (see test_nn.py)."""

from __future__ import annotations

import numpy as np
import torch

from modelport.t7.nn import build_module
from tests.t7.luabuild import array, data, long_storage, node, obj, rng, run, tensor, xcorr_ref

# ------------------------------------------------------------------------------------------
# Table modules, slicing


def table_out(module, xs):
    with torch.no_grad():
        out = module([torch.from_numpy(x) for x in xs] if isinstance(xs, list) else torch.from_numpy(xs))
    return [o.numpy() for o in out] if isinstance(out, list) else out.numpy()


def test_join_and_split_table_with_n_input_dims():
    r = rng(20)
    a, b = r.standard_normal((3, 4)), r.standard_normal((2, 4))
    np.testing.assert_array_equal(table_out(build_module(obj("nn.JoinTable", dimension=1, nInputDims=2)), [a, b]),
                                  np.concatenate([a, b], 0))
    ab, bb = r.standard_normal((5, 3, 4)), r.standard_normal((5, 2, 4))      # a batch: dimension 1 -> 2
    np.testing.assert_array_equal(table_out(build_module(obj("nn.JoinTable", dimension=1, nInputDims=2)), [ab, bb]),
                                  np.concatenate([ab, bb], 1))
    np.testing.assert_array_equal(table_out(build_module(obj("nn.JoinTable", dimension=-1)), [ab, ab]),
                                  np.concatenate([ab, ab], 2))
    x = r.standard_normal((3, 4, 5))
    split = build_module(obj("nn.SplitTable", dimension=1, nInputDims=2))    # char-rnn: gates of (b, 4, n)
    parts = table_out(split, x)
    assert len(parts) == 4 and all(np.array_equal(p, x[:, i]) for i, p in enumerate(parts))
    parts = table_out(split, x[0])                                          # no batch: dimension 1
    assert len(parts) == 4 and all(np.array_equal(p, x[0, i]) for i, p in enumerate(parts))


def test_select_table_and_elementwise_tables():
    r = rng(21)
    xs = [r.standard_normal(4) + 3 for _ in range(3)]
    np.testing.assert_array_equal(table_out(build_module(obj("nn.SelectTable", index=2)), xs), xs[1])
    np.testing.assert_array_equal(table_out(build_module(obj("nn.SelectTable", index=-1)), xs), xs[2])
    np.testing.assert_allclose(table_out(build_module(obj("nn.CMulTable")), xs), xs[0] * xs[1] * xs[2], rtol=1e-15)
    np.testing.assert_array_equal(table_out(build_module(obj("nn.CSubTable")), xs[:2]), xs[0] - xs[1])
    np.testing.assert_array_equal(table_out(build_module(obj("nn.CDivTable")), xs[:2]), xs[0] / xs[1])


def test_narrow_with_negative_length_and_dimension():
    x = rng(22).standard_normal((4, 6))
    np.testing.assert_array_equal(run(build_module(obj("nn.Narrow", dimension=2, index=3, length=2)), x), x[:, 2:4])
    # Lua: length < 0 -> size - index + length + 2 = 6 - 3 - 1 + 2 = 4
    np.testing.assert_array_equal(run(build_module(obj("nn.Narrow", dimension=2, index=3, length=-1)), x), x[:, 2:])
    np.testing.assert_array_equal(run(build_module(obj("nn.Narrow", dimension=-2, index=2, length=3)), x), x[1:4])


# ------------------------------------------------------------------------------------------
# More activations, padding, transposed and dilated convolutions


def test_leaky_relu_elu_constants():
    x = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(run(build_module(obj("nn.LeakyReLU", negval=0.2)), x), np.where(x > 0, x, 0.2 * x))
    np.testing.assert_allclose(run(build_module(obj("nn.ELU", alpha=0.5)), x), np.where(x > 0, x, 0.5 * np.expm1(x)),
                               rtol=1e-14)
    np.testing.assert_array_equal(run(build_module(obj("nn.MulConstant", constant_scalar=-2.5)), x), x * -2.5)
    np.testing.assert_array_equal(run(build_module(obj("nn.AddConstant", constant_scalar=0.75)), x), x + 0.75)


def test_prelu_per_plane_follows_luas_plane_dimension():
    r = rng(23)
    w = r.random(3)
    m = build_module(obj("nn.PReLU", weight=tensor(w), nOutputPlane=3))
    img = r.standard_normal((3, 4, 5))
    np.testing.assert_allclose(run(m, img), np.where(img > 0, img, w[:, None, None] * img), rtol=1e-15)
    np.testing.assert_allclose(run(m, img[None])[0], run(m, img), rtol=1e-15)
    vec = r.standard_normal((2, 3))
    np.testing.assert_allclose(run(m, vec), np.where(vec > 0, vec, w * vec), rtol=1e-15)
    shared = build_module(obj("nn.PReLU", weight=tensor(np.array([0.3])), nOutputPlane=0))
    np.testing.assert_allclose(run(shared, img), np.where(img > 0, img, 0.3 * img), rtol=1e-15)


def test_spatial_zero_padding_pads_and_crops():
    x = rng(24).standard_normal((2, 4, 5))
    m = build_module(obj("nn.SpatialZeroPadding", pad_l=1, pad_r=2, pad_t=0, pad_b=-1))
    np.testing.assert_array_equal(run(m, x), np.pad(x, ((0, 0), (0, 0), (1, 2)))[:, :3])


def test_spatial_full_convolution_scatters_each_input_pixel():
    r = rng(25)
    n_in, n_out, kh, kw, dh, dw, ph, pw, ah, aw = 2, 3, 3, 2, 2, 1, 1, 0, 1, 0
    w, b = r.standard_normal((n_in, n_out, kh, kw)), r.standard_normal(n_out)
    m = build_module(obj("nn.SpatialFullConvolution", weight=tensor(w), bias=tensor(b), nInputPlane=n_in,
                         nOutputPlane=n_out, kW=kw, kH=kh, dW=dw, dH=dh, padW=pw, padH=ph, adjW=aw, adjH=ah))
    x = r.standard_normal((n_in, 4, 3))
    oh, ow = (4 - 1) * dh - 2 * ph + kh + ah, (3 - 1) * dw - 2 * pw + kw + aw
    full = np.zeros((n_out, oh + 2 * ph, ow + 2 * pw))
    for c in range(n_in):
        for i in range(4):
            for j in range(3):
                full[:, i * dh:i * dh + kh, j * dw:j * dw + kw] += x[c, i, j] * w[c]
    expect = full[:, ph:ph + oh, pw:pw + ow] + b[:, None, None]
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-10, atol=1e-12)


def test_spatial_dilated_convolution():
    r = rng(26)
    w, b = r.standard_normal((2, 2, 2, 3)), r.standard_normal(2)
    m = build_module(obj("nn.SpatialDilatedConvolution", weight=tensor(w), bias=tensor(b), nInputPlane=2,
                         nOutputPlane=2, kW=3, kH=2, dW=1, dH=1, padW=1, padH=0, dilationW=2, dilationH=3))
    x = r.standard_normal((2, 7, 6))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    oh, ow = 7 - 3 * (2 - 1) - 1 + 1, 8 - 2 * (3 - 1) - 1 + 1
    expect = np.empty((2, oh, ow))
    for o in range(2):
        for i in range(oh):
            for j in range(ow):
                expect[o, i, j] = b[o] + np.sum(w[o] * xp[:, i:i + 3 * 2:3, j:j + 2 * 3:2])
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Reductions, pointwise functions, padding, resampling, transpose, MM, DepthConcat, Copy


def test_sum_mean_max_min_drop_the_dimension_as_lua():
    x = rng(30).standard_normal((2, 3, 4))
    assert np.allclose(run(build_module(obj("nn.Sum", dimension=2)), x), x.sum(1))
    assert np.allclose(run(build_module(obj("nn.Sum", dimension=1, nInputDims=2)), x), x.sum(1))   # batch
    assert np.allclose(run(build_module(obj("nn.Sum", dimension=2, sizeAverage=True, squeeze=False)), x),
                       x.mean(1, keepdims=True))
    assert np.allclose(run(build_module(obj("nn.Mean", dimension=-1)), x), x.mean(2))
    np.testing.assert_array_equal(run(build_module(obj("nn.Max", dimension=3)), x), x.max(2))
    np.testing.assert_array_equal(run(build_module(obj("nn.Min", dimension=1)), x), x.min(0))
    assert run(build_module(obj("nn.Sum", dimension=1)), x[0, 0]).shape == (1,)     # Lua keeps a 1-vector


def test_pointwise_functions():
    x = rng(31).random(7) + 0.1
    np.testing.assert_allclose(run(build_module(obj("nn.Exp")), x), np.exp(x), rtol=1e-15)
    np.testing.assert_allclose(run(build_module(obj("nn.Log")), x), np.log(x), rtol=1e-15)
    np.testing.assert_allclose(run(build_module(obj("nn.Power", pow=3)), x), x**3, rtol=1e-14)
    y = np.linspace(-2, 2, 9)
    np.testing.assert_array_equal(run(build_module(obj("nn.HardTanh", min_val=-1, max_val=1)), y), np.clip(y, -1, 1))
    np.testing.assert_array_equal(run(build_module(obj("nn.Clamp", min_val=-0.5, max_val=1.5)), y),
                                  np.clip(y, -0.5, 1.5))
    sp = run(build_module(obj("nn.SoftPlus", beta=2, threshold=3)), y)
    np.testing.assert_allclose(sp, np.where(2 * y > 3, y, np.log1p(np.exp(2 * y)) / 2), rtol=1e-14)


def test_reflection_replication_padding_and_nearest_upsampling():
    x = rng(32).standard_normal((2, 3, 4))
    refl = build_module(obj("nn.SpatialReflectionPadding", pad_l=2, pad_r=1, pad_t=1, pad_b=0))
    np.testing.assert_array_equal(run(refl, x), np.pad(x, ((0, 0), (1, 0), (2, 1)), mode="reflect"))
    repl = build_module(obj("nn.SpatialReplicationPadding", pad_l=0, pad_r=2, pad_t=1, pad_b=1))
    np.testing.assert_array_equal(run(repl, x), np.pad(x, ((0, 0), (1, 1), (0, 2)), mode="edge"))
    up = build_module(obj("nn.SpatialUpSamplingNearest", scale_factor=2))
    np.testing.assert_array_equal(run(up, x), x.repeat(2, axis=1).repeat(2, axis=2))
    np.testing.assert_array_equal(run(up, x[None])[0], run(up, x))


def test_transpose_mm_and_copy():
    r = rng(33)
    x = r.standard_normal((2, 3, 4))
    pairs = array(array(1, 3), array(1, 2))
    np.testing.assert_array_equal(run(build_module(obj("nn.Transpose", permutations=pairs)), x),
                                  x.swapaxes(0, 2).swapaxes(0, 1))
    a, b = r.standard_normal((5, 2, 3)), r.standard_normal((5, 4, 3))
    mm = build_module(obj("nn.MM", transA=False, transB=True))
    np.testing.assert_allclose(table_out(mm, [a, b]), a @ b.swapaxes(1, 2), rtol=1e-12)
    np.testing.assert_allclose(table_out(mm, [a[0], b[0]]), a[0] @ b[0].T, rtol=1e-12)
    copy = build_module(obj("nn.Copy", intype=b"torch.DoubleTensor", outtype=b"torch.FloatTensor", dontCast=False))
    assert run(copy, x).dtype == np.float32


def test_depth_concat_centres_smaller_outputs():
    r = rng(34)
    w3, w1 = r.standard_normal((2, 1, 3, 3)), r.standard_normal((1, 1, 1, 1))
    conv3 = obj("nn.SpatialConvolution", weight=tensor(w3), bias=tensor(np.zeros(2)), nInputPlane=1,
                nOutputPlane=2, kW=3, kH=3)
    conv1 = obj("nn.SpatialConvolution", weight=tensor(w1), bias=tensor(np.zeros(1)), nInputPlane=1,
                nOutputPlane=1, kW=1, kH=1)
    m = build_module(obj("nn.DepthConcat", dimension=1, modules=array(conv3, conv1)))
    x = r.standard_normal((1, 6, 5))
    got = run(m, x)
    assert got.shape == (3, 6, 5)
    # conv3 gives (2, 4, 3): Lua places it at 1-based offset floor((6-4)/2)+1 = 2, floor((5-3)/2)+1 = 2
    expect = np.zeros((2, 6, 5))
    expect[:, 1:5, 1:4] = xcorr_ref(x, w3, np.zeros(2), (1, 1), (0, 0))
    np.testing.assert_allclose(got[:2], expect, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got[2], x[0] * w1[0, 0, 0, 0], rtol=1e-12)


def test_char_rnn_lstm_cell_gmodule_matches_lstm_equations():
    # the cell char-rnn's LSTM.lua builds with nngraph: inputs {x, prev_c, prev_h}, outputs {next_c, next_h}
    r = rng(40)
    n_in, n = 3, 5
    wi, bi = r.standard_normal((4 * n, n_in)), r.standard_normal(4 * n)
    wh, bh = r.standard_normal((4 * n, n)), r.standard_normal(4 * n)
    d_in = data()
    d_split_in = data(d_in, nSplitOutputs=3)
    d_sel = [data(d_split_in, selectindex=i) for i in (1, 2, 3)]
    d_x, d_c, d_h = (data(s, module=obj("nn.Identity")) for s in d_sel)
    d_i2h = data(d_x, module=obj("nn.Linear", weight=tensor(wi), bias=tensor(bi)))
    d_h2h = data(d_h, module=obj("nn.Linear", weight=tensor(wh), bias=tensor(bh)))
    d_sum = data(d_i2h, d_h2h, module=obj("nn.CAddTable"))
    d_resh = data(d_sum, module=obj("nn.Reshape", size=long_storage([4, n]), nelement=4 * n))
    d_splt = data(d_resh, module=obj("nn.SplitTable", dimension=2))
    d_gates_split = data(d_splt, nSplitOutputs=4)
    d_gate = [data(d_gates_split, selectindex=i) for i in (1, 2, 3, 4)]
    d_ig, d_fg, d_og = (data(g, module=obj("nn.Sigmoid")) for g in d_gate[:3])
    d_tr = data(d_gate[3], module=obj("nn.Tanh"))
    d_fc = data(d_fg, d_c, module=obj("nn.CMulTable"))
    d_it = data(d_ig, d_tr, module=obj("nn.CMulTable"))
    d_next_c = data(d_fc, d_it, module=obj("nn.CAddTable"))
    d_tc = data(d_next_c, module=obj("nn.Tanh"))
    d_next_h = data(d_og, d_tc, module=obj("nn.CMulTable"))
    d_out = data(d_next_c, d_next_h)
    order = [d_in, d_split_in, *d_sel, d_x, d_c, d_h, d_i2h, d_h2h, d_sum, d_resh, d_splt, d_gates_split,
             *d_gate, d_ig, d_fg, d_og, d_tr, d_fc, d_it, d_next_c, d_tc, d_next_h, d_out]
    nodes = [node(d) for d in order]
    # no nInputs field (older nngraph): the count comes from the split of the input node
    m = build_module(obj("nn.gModule", forwardnodes=array(*nodes), innode=nodes[0], outnode=nodes[-1]))
    def sig(v):
        return 1 / (1 + np.exp(-v))

    for batch in (2, 1):
        x, c, h = r.standard_normal((batch, n_in)), r.standard_normal((batch, n)), r.standard_normal((batch, n))
        z = (x @ wi.T + bi + h @ wh.T + bh).reshape(batch, 4, n)
        expect_c = sig(z[:, 1]) * c + sig(z[:, 0]) * np.tanh(z[:, 3])
        expect_h = sig(z[:, 2]) * np.tanh(expect_c)
        with torch.no_grad():
            got_c, got_h = m(*(torch.from_numpy(v) for v in (x, c, h)))
        np.testing.assert_allclose(got_c.numpy(), expect_c, rtol=1e-12)
        np.testing.assert_allclose(got_h.numpy(), expect_h, rtol=1e-12)


def test_spatial_lp_pooling_is_its_sequence_of_power_subsampling_root():
    x = rng(41).standard_normal((2, 4, 6))
    sub = obj("nn.SpatialSubSampling", weight=tensor(np.ones(2)), bias=tensor(np.zeros(2)), nInputPlane=2,
              kW=2, kH=2, dW=2, dH=2)
    m = build_module(obj("nn.SpatialLPPooling", modules=array(obj("nn.Square"), sub, obj("nn.Sqrt", eps=0))))
    expect = np.sqrt((x**2).reshape(2, 2, 2, 3, 2).sum(axis=(2, 4)))
    np.testing.assert_allclose(run(m, x), expect, rtol=1e-14)
