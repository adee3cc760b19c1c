"""Build Lua nn objects by hand, as the .t7 reader returns them (keys are bytes / float numbers)."""

from __future__ import annotations

import numpy as np
import torch

from modelport.t7.objects import LuaObject, LuaTable, T7Storage, T7Tensor

_DT = {np.dtype("float32"): ("torch.FloatTensor", "float32"), np.dtype("float64"): ("torch.DoubleTensor", "float64"),
       np.dtype("int64"): ("torch.LongTensor", "int64")}


def tensor(arr, storage: T7Storage | None = None, offset: int = 0) -> T7Tensor:
    """A contiguous T7Tensor holding ``arr``; with ``storage``, a view at ``offset`` into it."""
    arr = np.asarray(arr)
    cls, dt = _DT[arr.dtype]
    if storage is None:
        storage = T7Storage(cls.replace("Tensor", "Storage"), dt, arr.reshape(-1).copy())
        offset = 0
    stride, acc = [], 1
    for s in reversed(arr.shape):
        stride.insert(0, acc)
        acc *= s
    return T7Tensor(cls, dt, tuple(arr.shape), tuple(stride), offset, storage)


def empty(cls: str = "torch.FloatTensor") -> T7Tensor:
    return T7Tensor(cls, "float32", (), (), 0, None)


def long_storage(values) -> T7Storage:
    return T7Storage("torch.LongStorage", "int64", np.asarray(values, dtype=np.int64))


def array(*items) -> LuaTable:
    t = LuaTable()
    for i, v in enumerate(items, 1):
        t[float(i)] = v
    return t


def obj(cls: str, version: int = 1, **fields) -> LuaObject:
    t = LuaTable()
    for k, v in fields.items():
        t[k.encode()] = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
    t.setdefault(b"output", empty())
    return LuaObject(cls, t, version)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def run(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(x))).numpy()


def xcorr_ref(x, w, b, stride, pad):
    """Lua SpatialConvolution on one (C, H, W) image: zero padding, valid cross-correlation."""
    (dh, dw), (ph, pw) = stride, pad
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    n_out, n_in, kh, kw = w.shape
    oh, ow = (x.shape[1] - kh) // dh + 1, (x.shape[2] - kw) // dw + 1
    out = np.empty((n_out, oh, ow))
    for o in range(n_out):
        for i in range(oh):
            for j in range(ow):
                out[o, i, j] = b[o] + np.sum(w[o] * x[:, i * dh:i * dh + kh, j * dw:j * dw + kw])
    return out


# nngraph nodes, built by hand
def node(data: LuaTable) -> LuaObject:
    return LuaObject("nngraph.Node", LuaTable({b"data": data, b"children": LuaTable()}), 1)


def data(*parents, **fields) -> LuaTable:
    t = LuaTable({b"mapindex": array(*parents), b"input": LuaTable()})
    for k, v in fields.items():
        t[k.encode()] = float(v) if isinstance(v, int) else v
    return t
