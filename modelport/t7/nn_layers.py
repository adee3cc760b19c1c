"""Builders for Lua nn layers (Linear, convolutions, pooling, normalisation, activations, shapes).

The PyTorch modules defined here exist only where Lua's behaviour differs from the stock
``torch.nn`` module (non-batched input, dimension rules, 1-based indices); everything else maps to
the stock module with the file's parameters. See :mod:`modelport.t7.nn` for the rules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError
from .nn_base import check_shape, set_params, register

# --------------------------------------------------------------------------------------------
# Modules with Lua semantics


class BatchNorm(nn.Module):
    """Lua (Spatial)BatchNormalization in eval mode: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    ``n_dim`` is the batched input rank Lua expects (2 for BatchNormalization, 4 for
    SpatialBatchNormalization); an input one rank lower is treated as a batch of one, as Lua does
    in evaluation mode.
    """

    def __init__(self, n_dim: int, running_mean, running_var, weight, bias, eps: float):
        super().__init__()
        self.n_dim = n_dim
        self.eps = eps
        self.register_buffer("running_mean", running_mean)
        self.register_buffer("running_var", running_var)
        self.weight = nn.Parameter(weight) if weight is not None else None
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x):
        unbatched = x.dim() == self.n_dim - 1
        if unbatched:
            x = x.unsqueeze(0)
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return f"{self.running_mean.numel()}, eps={self.eps}, affine={self.weight is not None}"


class SoftMax(nn.Module):
    """Lua SoftMax / LogSoftMax: over dim 0 for 1-D and 3-D (C, H, W) input, dim 1 for 2-D and 4-D."""

    def __init__(self, log: bool):
        super().__init__()
        self.log = log

    def forward(self, x):
        if x.dim() not in (1, 2, 3, 4):
            raise ValueError(f"Lua (Log)SoftMax takes 1-D to 4-D input, got {x.dim()}-D")
        dim = 0 if x.dim() in (1, 3) else 1
        return F.log_softmax(x, dim) if self.log else F.softmax(x, dim)

    def extra_repr(self) -> str:
        return "log" if self.log else ""


class View(nn.Module):
    """Lua nn.View: ``size`` may hold one -1; a leading batch dimension is kept by Lua's rules.

    With ``num_input_dims`` unset, the input is a batch when its element count is a multiple
    (other than 1) of the elements of ``size``, and ``size`` has no -1. With ``num_input_dims``
    set, dimensions before the last ``num_input_dims`` are batch dimensions (flattened into one).
    """

    def __init__(self, size: list[int], num_elements: int, num_input_dims: int | None = None):
        super().__init__()
        self.size = list(size)
        self.num_elements = num_elements
        self.num_input_dims = num_input_dims

    def _batch_size(self, shape) -> int | None:
        ind = len(shape)
        maxdim = self.num_input_dims if self.num_input_dims is not None else ind
        ine = math.prod(shape[max(ind - maxdim, 0):])
        if ine % self.num_elements != 0:
            raise ValueError(f"input view {tuple(shape)} and desired view {tuple(self.size)} do not match")
        bsz = ine // self.num_elements
        if -1 in self.size:
            bsz = 1
        bsz *= math.prod(shape[: max(ind - maxdim, 0)])
        if bsz == 1 and (self.num_input_dims is None or ind <= self.num_input_dims):
            return None
        return bsz

    def forward(self, x):
        bsz = self._batch_size(tuple(x.shape))
        return x.reshape(self.size) if bsz is None else x.reshape([bsz, *self.size])

    def extra_repr(self) -> str:
        return "x".join(map(str, self.size)) + (f", num_input_dims={self.num_input_dims}" if self.num_input_dims else "")


class Reshape(nn.Module):
    """Lua nn.Reshape: ``batch_mode`` None means "batch unless the input holds exactly the
    elements of ``size`` and its first dimension is not 1" (Lua's rule)."""

    def __init__(self, size: list[int], batch_mode: bool | None):
        super().__init__()
        self.size = list(size)
        self.nelement = math.prod(size)
        self.batch_mode = batch_mode

    def forward(self, x):
        if self.batch_mode is False or (self.batch_mode is None and x.numel() == self.nelement and x.shape[0] != 1):
            return x.reshape(self.size)
        return x.reshape([x.shape[0], *self.size])

    def extra_repr(self) -> str:
        mode = "" if self.batch_mode is None else f", batch_mode={self.batch_mode}"
        return "x".join(map(str, self.size)) + mode


class LookupTable(nn.Module):
    """Lua nn.LookupTable. **Indices are 1-based**, as in Lua: index 1 selects ``weight[0]``.

    Input: a 1-D tensor of n indices (output ``(n, dim)``) or a 2-D batch ``(b, n)`` (output
    ``(b, n, dim)``); float index tensors (Lua's DoubleTensor inputs) are accepted. ``max_norm``
    renormalises the looked-up rows in place, as Lua does.
    """

    def __init__(self, weight, max_norm: float | None = None, norm_type: float = 2.0):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.max_norm = max_norm
        self.norm_type = norm_type

    def forward(self, indices):
        idx = indices.long()
        checked = not (torch.jit.is_tracing() or torch.jit.is_scripting())
        if checked and idx.numel() and (int(idx.min()) < 1 or int(idx.max()) > self.weight.shape[0]):
            raise IndexError(
                f"LookupTable indices are 1-based (Lua): valid range 1..{self.weight.shape[0]}, "
                f"got {int(idx.min())}..{int(idx.max())}"
            )
        return F.embedding(idx - 1, self.weight, max_norm=self.max_norm, norm_type=self.norm_type)

    def extra_repr(self) -> str:
        n, d = self.weight.shape
        return f"{n}, {d}, one_based=True" + (f", max_norm={self.max_norm}" if self.max_norm else "")


class MulConstant(nn.Module):
    """Multiplies by a constant (Lua's eval-time Dropout v1 scaling, sum pooling)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"{self.factor!r}"


class Elementwise(nn.Module):
    """A parameter-free elementwise function (``abs``, ``square``, ``sqrt``)."""

    _FUNCS = {"abs": torch.abs, "square": torch.square, "sqrt": torch.sqrt}

    def __init__(self, name: str, eps: float = 0.0):
        super().__init__()
        self.name = name
        self.eps = eps                  # Lua nn.Sqrt(eps): sqrt(x + eps)

    def forward(self, x):
        return self._FUNCS[self.name](x + self.eps if self.eps else x)

    def extra_repr(self) -> str:
        return self.name + (f", eps={self.eps}" if self.eps else "")


class AddConstant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x + self.value

    def extra_repr(self) -> str:
        return f"{self.value!r}"


class ZeroPad(nn.Module):
    """Lua SpatialZeroPadding(pad_l, pad_r, pad_t, pad_b); negative values crop."""

    def __init__(self, pads: list[int]):
        super().__init__()
        self.pads = list(pads)

    def forward(self, x):
        return F.pad(x, self.pads)

    def extra_repr(self) -> str:
        return f"l={self.pads[0]}, r={self.pads[1]}, t={self.pads[2]}, b={self.pads[3]}"


class PReLU(nn.Module):
    """Lua PReLU: ``x if x > 0 else w * x``, one w per plane (dim 0 of 1-D/3-D input, dim 1 of
    2-D/4-D) or one shared w (``nOutputPlane == 0``)."""

    def __init__(self, weight, shared: bool):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.shared = shared

    def forward(self, x):
        w = self.weight
        if not self.shared:
            dim = 0 if x.dim() in (1, 3) else 1
            w = w.reshape([-1] + [1] * (x.dim() - dim - 1))
        return torch.where(x > 0, x, w * x)

    def extra_repr(self) -> str:
        return "shared" if self.shared else f"{self.weight.numel()}"


class AvgPool2d(nn.AvgPool2d):
    """AvgPool2d followed by a constant factor (kW*kH for Lua's ``divide == false`` sum pooling)."""

    def __init__(self, *args, multiplier: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.multiplier = multiplier

    def forward(self, x):
        y = super().forward(x)
        return y * self.multiplier if self.multiplier != 1.0 else y


# --------------------------------------------------------------------------------------------
# Builders


@register("nn.Linear", "nn.LinearNoBias")
def _linear(obj, f):
    weight = f.tensor("weight")
    if weight.dim() != 2:
        raise f.error(f"weight should be 2-D (out, in), found shape {tuple(weight.shape)}")
    n_out, n_in = weight.shape
    bias = _bias(f, n_out, weight.dtype) if obj.class_name == "nn.Linear" else None
    m = nn.Linear(n_in, n_out, bias=bias is not None, device="meta")
    return set_params(m, weight=weight, bias=bias)


@register("nn.SpatialConvolution", "nn.SpatialConvolutionMM", "cudnn.SpatialConvolution")
def _conv(obj, f):
    weight = f.tensor("weight")
    n_in, n_out = f.int("nInputPlane"), f.int("nOutputPlane")
    kw, kh = f.int("kW"), f.int("kH")
    dw, dh = f.int("dW", 1), f.int("dH", 1)
    if f.has("padding"):                         # files from before padW/padH existed
        pw = ph = f.int("padding")
    else:
        pw, ph = f.int("padW", 0), f.int("padH", 0)
    groups = f.int("groups", 1)                  # cudnn only
    if groups < 1 or n_in % groups or n_out % groups:
        raise f.error(f"groups={groups} does not divide nInputPlane={n_in} and nOutputPlane={n_out}")
    check_shape(f, "weight", weight, n_out * (n_in // groups) * kh * kw)
    # SpatialConvolutionMM (and old SpatialConvolution) keep weight 2-D: (nOut, nIn*kH*kW), row-major.
    weight = weight.reshape(n_out, n_in // groups, kh, kw)
    bias = _bias(f, n_out, weight.dtype)
    m = nn.Conv2d(n_in, n_out, (kh, kw), stride=(dh, dw), padding=(ph, pw), groups=groups,
                  bias=bias is not None, device="meta")
    return set_params(m, weight=weight, bias=bias)


@register("nn.SpatialConvolutionMap")
def _conv_map(obj, f):
    """A sparse connection table (in, out plane pairs, 1-based) becomes a dense Conv2d with zeros."""
    weight, table = f.tensor("weight"), f.tensor("connTable")
    n_in, n_out = f.int("nInputPlane"), f.int("nOutputPlane")
    kw, kh = f.int("kW"), f.int("kH")
    if table.dim() != 2 or table.shape[1] != 2 or weight.shape != (table.shape[0], kh, kw):
        raise f.error(f"connTable {tuple(table.shape)} and weight {tuple(weight.shape)} do not match (nConn, 2) "
                      f"and (nConn, {kh}, {kw})")
    pairs = table.long() - 1
    if pairs.numel() and (int(pairs[:, 0].min()) < 0 or int(pairs[:, 0].max()) >= n_in
                          or int(pairs[:, 1].min()) < 0 or int(pairs[:, 1].max()) >= n_out):
        raise f.error("connTable names a plane outside nInputPlane/nOutputPlane")
    dense = torch.zeros(n_out, n_in, kh, kw, dtype=weight.dtype)
    dense.index_put_((pairs[:, 1], pairs[:, 0]), weight, accumulate=True)
    bias = f.tensor("bias").reshape(n_out).to(weight.dtype)
    m = nn.Conv2d(n_in, n_out, (kh, kw), stride=(f.int("dH", 1), f.int("dW", 1)), device="meta")
    return set_params(m, weight=dense, bias=bias)


@register("nn.SpatialSubSampling")
def _subsampling(obj, f):
    """Per plane: weight[k] * (sum over the kW x kH window) + bias[k]: a depthwise Conv2d."""
    n = f.int("nInputPlane")
    kw, kh = f.int("kW"), f.int("kH")
    weight, bias = f.tensor("weight"), f.tensor("bias")
    if weight.dim() == 3 and tuple(weight.shape) == (n, kh, kw):
        # SpatialLPPooling of 2013-14 resized its sub-sampling weight to (n, kH, kW); TH's C code reads
        # the plane weights as weight->data[k], the first n values, whatever the shape
        weight = weight.reshape(-1)[:n]
    check_shape(f, "weight", weight, n)
    check_shape(f, "bias", bias, n)
    dense = weight.reshape(n, 1, 1, 1).expand(n, 1, kh, kw).contiguous()
    m = nn.Conv2d(n, n, (kh, kw), stride=(f.int("dH", 1), f.int("dW", 1)), groups=n, device="meta")
    return set_params(m, weight=dense, bias=bias.reshape(n).to(weight.dtype))


@register("nn.SpatialFullConvolution", "cudnn.SpatialFullConvolution")
def _full_conv(obj, f):
    """Transposed convolution: weight (nInputPlane, nOutputPlane, kH, kW), output padding adjW/adjH."""
    weight = f.tensor("weight")
    n_in, n_out = f.int("nInputPlane"), f.int("nOutputPlane")
    kw, kh = f.int("kW"), f.int("kH")
    check_shape(f, "weight", weight, n_in * n_out * kh * kw)
    bias = _bias(f, n_out, weight.dtype)
    m = nn.ConvTranspose2d(n_in, n_out, (kh, kw), stride=(f.int("dH", 1), f.int("dW", 1)),
                           padding=(f.int("padH", 0), f.int("padW", 0)),
                           output_padding=(f.int("adjH", 0), f.int("adjW", 0)), bias=bias is not None, device="meta")
    return set_params(m, weight=weight.reshape(n_in, n_out, kh, kw), bias=bias)


@register("nn.SpatialDilatedConvolution")
def _dilated_conv(obj, f):
    weight = f.tensor("weight")
    n_in, n_out = f.int("nInputPlane"), f.int("nOutputPlane")
    kw, kh = f.int("kW"), f.int("kH")
    check_shape(f, "weight", weight, n_out * n_in * kh * kw)
    bias = _bias(f, n_out, weight.dtype)
    m = nn.Conv2d(n_in, n_out, (kh, kw), stride=(f.int("dH", 1), f.int("dW", 1)),
                  padding=(f.int("padH", 0), f.int("padW", 0)),
                  dilation=(f.int("dilationH", 1), f.int("dilationW", 1)), bias=bias is not None, device="meta")
    return set_params(m, weight=weight.reshape(n_out, n_in, kh, kw), bias=bias)


@register("nn.SpatialZeroPadding")
def _zero_padding(obj, f):
    """Pads (or, negative, crops) the last two dimensions: left, right, top, bottom."""
    return ZeroPad([f.int("pad_l"), f.int("pad_r"), f.int("pad_t"), f.int("pad_b")])


@register("nn.SpatialMaxPooling", "cudnn.SpatialMaxPooling")
def _max_pool(obj, f):
    kw, kh = f.int("kW"), f.int("kH")
    return nn.MaxPool2d((kh, kw), stride=(f.int("dH", kh), f.int("dW", kw)),
                        padding=(f.int("padH", 0), f.int("padW", 0)), ceil_mode=f.bool("ceil_mode", False))


@register("nn.SpatialAveragePooling", "cudnn.SpatialAveragePooling")
def _avg_pool(obj, f):
    kw, kh = f.int("kW"), f.int("kH")
    if f.raw("ceil_mode", None) is None:         # Lua's backward-compatibility defaults
        ceil, include_pad, ph, pw = False, True, 0, 0
    else:
        ceil, include_pad = f.bool("ceil_mode"), f.bool("count_include_pad", True)
        ph, pw = f.int("padH", 0), f.int("padW", 0)
    divide = f.raw("divide", None)               # Lua sums (output * kW*kH) unless divide is true
    return AvgPool2d((kh, kw), stride=(f.int("dH", 1), f.int("dW", 1)), padding=(ph, pw), ceil_mode=ceil,
                     count_include_pad=include_pad, multiplier=1.0 if divide is True else float(kw * kh))


@register("nn.BatchNormalization", "nn.SpatialBatchNormalization", "nn.VolumetricBatchNormalization",
          "cudnn.BatchNormalization", "cudnn.SpatialBatchNormalization", "cudnn.VolumetricBatchNormalization")
def _batch_norm(obj, f):
    n_dim = {"BatchNormalization": 2, "SpatialBatchNormalization": 4,
             "VolumetricBatchNormalization": 5}[obj.class_name.split(".")[1]]
    eps = f.number("eps", 1e-5)
    mean = f.tensor("running_mean").reshape(-1)
    n = mean.numel()
    version = obj.version if obj.version is not None else 1
    if version < 2 and _optional(f, "running_std") is not None:
        # Lua's BN:read for files before version 2: running_var = running_std^-2 - eps, in the file's dtype
        std = f.tensor("running_std").reshape(-1)
        var = std.pow(-2).add(-eps)
    elif _optional(f, "running_var") is not None:
        var = f.tensor("running_var").reshape(-1)
    else:
        raise f.error(f"neither running_var nor running_std is present (class version {version})")
    check_shape(f, "running_var", var, n)
    weight, bias = _optional(f, "weight"), _optional(f, "bias")
    if f.raw("affine", True) is False:
        weight = bias = None
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_shape(f, name, t, n)
    weight = weight.reshape(n).to(mean.dtype) if weight is not None else None
    bias = bias.reshape(n).to(mean.dtype) if bias is not None else None
    return BatchNorm(n_dim, mean, var.to(mean.dtype), weight, bias, eps)


@register("nn.ReLU", "nn.Threshold", "cudnn.ReLU")
def _threshold(obj, f):
    default = 0.0 if obj.class_name.endswith("ReLU") else 1e-6    # Lua's constructor defaults
    threshold, val = f.number("threshold", default), f.number("val", 0.0)
    if threshold == 0.0 and val == 0.0:
        return nn.ReLU()
    return Threshold(threshold, val)


class Threshold(nn.Threshold):
    """nn.Threshold as ``where(x > threshold, x, value)``: the same values, and ONNX exports it at every
    opset (torch's own threshold op exports only with a zero threshold)."""

    def forward(self, x):
        return torch.where(x > self.threshold, x, torch.full_like(x, self.value))


@register("nn.Tanh", "cudnn.Tanh")
def _tanh(obj, f):
    return nn.Tanh()


@register("nn.Sigmoid", "cudnn.Sigmoid")
def _sigmoid(obj, f):
    return nn.Sigmoid()


@register("nn.LeakyReLU")
def _leaky_relu(obj, f):
    return nn.LeakyReLU(f.number("negval", 1 / 100))


@register("nn.ELU")
def _elu(obj, f):
    return nn.ELU(f.number("alpha", 1.0))


@register("nn.PReLU")
def _prelu(obj, f):
    weight = f.tensor("weight").reshape(-1)
    n = f.int("nOutputPlane", 0)
    check_shape(f, "weight", weight, max(n, 1))
    return PReLU(weight, shared=n == 0)


@register("nn.MulConstant")
def _mul_constant(obj, f):
    return MulConstant(f.number("constant_scalar"))


@register("nn.AddConstant")
def _add_constant(obj, f):
    return AddConstant(f.number("constant_scalar"))


@register("nn.Abs")
def _abs(obj, f):
    return Elementwise("abs")


@register("nn.Square")
def _square(obj, f):
    return Elementwise("square")


@register("nn.Sqrt")
def _sqrt(obj, f):
    return Elementwise("sqrt", f.number("eps", 0.0))


@register("nn.SoftMax", "cudnn.SoftMax")
def _softmax(obj, f):
    return SoftMax(log=False)


@register("nn.LogSoftMax", "cudnn.LogSoftMax")
def _log_softmax(obj, f):
    return SoftMax(log=True)


@register("nn.Dropout", "nn.SpatialDropout")
def _dropout(obj, f):
    p = f.number("p", 0.5)
    if f.raw("stochastic_inference", False) is True:
        raise UnsupportedError(f"{f.ctx.where(f.path, obj)}: stochastic_inference=true makes Lua drop units "
                               "at evaluation time too; a deterministic rebuild cannot match it")
    if p == 0.0 or f.raw("v2", None) is True:
        return nn.Dropout(p) if p < 1.0 else nn.Identity()
    return MulConstant(1.0 - p)                   # Dropout v1 (v2 absent or false): eval scales by 1-p


@register("nn.View")
def _view(obj, f):
    size = f.ints("size")
    if any(s < -1 or s == 0 for s in size) or size.count(-1) > 1:
        raise f.error(f"size {size} is not a valid view (positive sizes, at most one -1)")
    computed = math.prod(s for s in size if s > 0)
    num_input_dims = f.int("numInputDims") if f.has("numInputDims") else None
    return View(size, f.int("numElements", computed), num_input_dims)


@register("nn.Reshape")
def _reshape(obj, f):
    size = f.ints("size")
    if any(s < 1 for s in size):
        raise f.error(f"size {size} is not a valid shape")
    mode = f.raw("batchMode", None)
    if mode is not None and not isinstance(mode, bool):
        raise f.error("field 'batchMode' should be a boolean")
    return Reshape(size, mode)


@register("nn.LookupTable")
def _lookup_table(obj, f):
    weight = f.tensor("weight")
    if weight.dim() != 2:
        raise f.error(f"weight should be 2-D (nIndex, dim), found shape {tuple(weight.shape)}")
    max_norm = f.number("maxNorm") if f.has("maxNorm") else None
    return LookupTable(weight, max_norm, f.number("normType", 2.0))


def _bias(f, n_out: int, dtype) -> torch.Tensor | None:
    """The optional ``bias`` field: ``n_out`` elements, as a 1-D tensor of the weight's dtype."""
    bias = _optional(f, "bias")
    if bias is None:
        return None
    check_shape(f, "bias", bias, n_out)
    return bias.reshape(n_out).to(dtype)


def _optional(f, name: str):
    """A tensor field, or None when it is absent or an empty tensor."""
    from .objects import T7Tensor

    value = f.raw(name, None)
    if value is None or (isinstance(value, T7Tensor) and len(value.size) == 0):
        return None
    return f.tensor(name)
