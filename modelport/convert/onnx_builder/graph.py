"""A small ONNX graph builder: nodes with fresh names, constants kept in the graph, and the pieces
a decoder is made of (norms, rotary embedding, attention over a key/value cache, activations) written
as standard ops at any opset 14-24: from 23 on with that opset's RMSNormalization, RotaryEmbedding and
Attention nodes, below it as decompositions into elementary ops.

Shapes in comments follow the reference models: B batch, T new tokens, P past tokens, S = P + T,
C hidden size, nh / nkv query / key-value heads, hs head size. Hidden states travel as 2-D
``(B*T, C)`` so every projection is one ``Gemm`` on the checkpoint's own weight (``transB=1`` for a
``[out, in]`` Linear weight): no weight is transposed or copied.
"""

from __future__ import annotations

import math

import numpy as np

FLOAT32_MIN = float(np.finfo(np.float32).min)

# From opset 23 on, attention is opset 23's Attention node and rotary its RotaryEmbedding node (below 23,
# the decompositions further down). Checked against onnxruntime 1.32's CPU kernels, float32 and float16:
# grouped-query heads (q_num_heads > kv_num_heads on 3-D inputs), partial rotary (rotary_embedding_dim,
# GPT-NeoX), past_key/past_value in and present_key/present_value out, and a boolean mask of causality and
# left padding whose fully masked rows (padding queries) come out finite; every family at 23 and 24 matches
# transformers in tests/convert/test_onnx_builder.py. RMSNormalization (also 23) normalises in float32
# (stash_type 1) for float16 graphs too.
FUSED_OPSET = 23


class Graph:
    """Nodes, inputs, outputs and small constants of one graph under construction."""

    def __init__(self, opset: int, dtype: int):
        from onnx import TensorProto

        self.opset = opset
        self.fused = opset >= FUSED_OPSET     # Attention and RotaryEmbedding nodes, not their decompositions
        self.dtype = dtype                   # onnx TensorProto type of activations and weights
        self.float = TensorProto.FLOAT
        self.nodes: list = []
        self.inputs: list = []
        self.outputs: list = []
        self.constants: list = []            # Constant nodes (shapes, axes, scalars)
        self._n = 0
        self._const: dict = {}
        self.scope = ""                      # node-name prefix, torch.onnx style: /model/layers.3

    # -- plumbing ------------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        """Add one node; returns its output name (or names when ``outputs`` > 1)."""
        from onnx import helper

        self._n += 1
        base = f"{self.scope}/{name or op_type.lower()}_{self._n}"
        outs = [f"{base}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs[0] if outputs == 1 else outs

    def enter(self, module: str) -> None:
        """Name the next nodes after ``module`` (``model.layers.3`` -> ``/model/layers.3/…``, as torch.onnx
        names them), so that tools locating a block's output by node name (parity's layer search) find it."""
        parts: list[str] = []
        for p in module.split(".") if module else ():
            if p.isdigit() and parts:
                parts[-1] += f".{p}"
            else:
                parts.append(p)
        self.scope = "".join(f"/{p}" for p in parts)

    def out(self, op_type: str, *inputs: str, to: str, **attrs) -> str:
        """A node whose output is a graph output named ``to``."""
        from onnx import helper

        self._n += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), [to], name=f"{self.scope}/{to}", **attrs))
        return to

    def named(self, op_type: str, inputs: list[str], outputs: list[str | None], **attrs) -> list[str]:
        """A node whose outputs are named where ``outputs`` gives a name (graph outputs), fresh elsewhere."""
        from onnx import helper

        self._n += 1
        base = f"{self.scope}/{op_type.lower()}_{self._n}"
        outs = [o or f"{base}/out{j}" for j, o in enumerate(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, **attrs))
        return outs

    def const(self, value, dtype=None) -> str:
        """A constant (int64 for ints, float32 for floats unless ``dtype``), shared by value: a ``Constant``
        node, so that the graph's initializers are the checkpoint's tensors and nothing else."""
        from onnx import helper, numpy_helper

        arr = np.asarray(value, dtype=dtype if dtype is not None else (np.int64 if _is_int(value) else np.float32))
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const:
            name = f"/const_{len(self._const)}"
            self.constants.append(helper.make_node("Constant", [], [name], name=name,
                                                   value=numpy_helper.from_array(arr, name)))
            self._const[key] = name
        return self._const[key]

    def act_const(self, value) -> str:
        """A scalar constant in the activation dtype."""
        from onnx import helper

        return self.const(value, helper.tensor_dtype_to_np_dtype(self.dtype))

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    # -- opset-dependent forms ------------------------------------------------------------------------
    def reduce_mean(self, x: str, axis: int = -1) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const([axis]), keepdims=1)
        return self.op("ReduceMean", x, axes=[axis], keepdims=1)

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.const(list(axes)))

    def slice(self, x: str, start: int, end: int, axis: int = -1) -> str:
        return self.op("Slice", x, self.const([start]), self.const([end]), self.const([axis]))

    # -- layers ---------------------------------------------------------------------------------------
    def linear(self, x: str, weight: str, bias: str | None = None, transposed: bool = True) -> str:
        """``x @ weight.T + bias`` for a ``[out, in]`` weight (``transposed``), ``x @ weight + bias`` for
        GPT-2's ``[in, out]`` Conv1D weights; ``x`` is 2-D."""
        args = (x, weight) + ((bias,) if bias else ())
        return self.op("Gemm", *args, transB=1 if transposed else 0)

    def rms_norm(self, x: str, weight: str, eps: float) -> str:
        """``weight * (x / sqrt(mean(x²) + eps))``, the statistics in float32 as the reference computes them."""
        if self.opset >= 23:             # normalised in float32 (stash_type 1) whatever the graph's dtype
            return self.op("RMSNormalization", x, weight, axis=-1, epsilon=eps, stash_type=1)
        h = x if self.dtype == self.float else self.cast(x, self.float)
        var = self.reduce_mean(self.op("Mul", h, h))
        h = self.op("Mul", h, self.op("Reciprocal", self.op("Sqrt", self.op("Add", var, self.const(eps)))))
        if self.dtype != self.float:
            h = self.cast(h, self.dtype)
        return self.op("Mul", h, weight)

    def layer_norm(self, x: str, weight: str, bias: str, eps: float) -> str:
        if self.opset >= 17:
            return self.op("LayerNormalization", x, weight, bias, axis=-1, epsilon=eps)
        h = x if self.dtype == self.float else self.cast(x, self.float)
        d = self.op("Sub", h, self.reduce_mean(h))
        var = self.reduce_mean(self.op("Mul", d, d))
        h = self.op("Div", d, self.op("Sqrt", self.op("Add", var, self.const(eps))))
        if self.dtype != self.float:
            h = self.cast(h, self.dtype)
        return self.op("Add", self.op("Mul", h, weight), bias)

    def activation(self, x: str, name: str) -> str:
        c = self.act_const
        if name in ("silu", "swish"):
            return self.op("Mul", x, self.op("Sigmoid", x))
        if name == "relu":
            return self.op("Relu", x)
        if name == "gelu":                                     # exact: 0.5 x (1 + erf(x / sqrt 2))
            e = self.op("Erf", self.op("Mul", x, c(1 / math.sqrt(2.0))))
            return self.op("Mul", self.op("Mul", x, c(0.5)), self.op("Add", e, c(1.0)))
        if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):   # tanh approximation
            cube = self.op("Mul", self.op("Mul", x, x), x)
            inner = self.op("Mul", self.op("Add", x, self.op("Mul", cube, c(0.044715))), c(math.sqrt(2.0 / math.pi)))
            return self.op("Mul", self.op("Mul", x, c(0.5)), self.op("Add", self.op("Tanh", inner), c(1.0)))
        raise ValueError(f"activation {name!r} has no ONNX decomposition here")

    # -- rotary ---------------------------------------------------------------------------------------
    def rotary_cos_sin(self, position_ids: str, inv_freq: np.ndarray) -> tuple[str, str]:
        """cos and sin for (B, T) positions, angles in float32, in the activation dtype: each (B, T, rd/2)
        for RotaryEmbedding, (B, 1, T, rd) for the decomposition."""
        pos = self.unsqueeze(self.cast(position_ids, self.float), 2)              # (B, T, 1)
        freqs = self.op("Mul", pos, self.const(inv_freq.astype(np.float32)))       # (B, T, rd/2)
        emb = freqs if self.fused else self.unsqueeze(self.op("Concat", freqs, freqs, axis=-1), 1)   # (B, 1, T, rd)
        cos, sin = self.op("Cos", emb), self.op("Sin", emb)
        if self.dtype != self.float:
            cos, sin = self.cast(cos, self.dtype), self.cast(sin, self.dtype)
        return cos, sin

    def rotate(self, x: str, cos: str, sin: str, rotary_dims: int, head_dim: int) -> str:
        """Rotate the first ``rotary_dims`` of each (B, nh, T, hs) head, halves rotated; the rest pass."""
        rot = x if rotary_dims == head_dim else self.slice(x, 0, rotary_dims)
        half = rotary_dims // 2
        x1, x2 = self.slice(rot, 0, half), self.slice(rot, half, rotary_dims)
        turned = self.op("Concat", self.op("Neg", x2), x1, axis=-1)
        out = self.op("Add", self.op("Mul", rot, cos), self.op("Mul", turned, sin))
        if rotary_dims == head_dim:
            return out
        return self.op("Concat", out, self.slice(x, rotary_dims, head_dim), axis=-1)

    def rotary_op(self, x: str, cos: str, sin: str, n_heads: int, rotary_dims: int, head_dim: int) -> str:
        """RotaryEmbedding of (B, T, n*hs): the first ``rotary_dims`` of each head, halves rotated."""
        attrs = {"rotary_embedding_dim": rotary_dims} if rotary_dims != head_dim else {}
        return self.op("RotaryEmbedding", x, cos, sin, num_heads=n_heads, interleaved=0, **attrs)

    # -- attention ------------------------------------------------------------------------------------
    def attention_op(self, q: str, k: str, v: str, allowed: str, n_heads: int, n_kv: int, head_dim: int,
                     scale: float, past: tuple[str, str] | None = None, present: tuple[str, str] | None = None) -> str:
        """Attention of (B, T, nh*hs) queries over (B, T, nkv*hs) keys and values joined to ``past``
        (B, nkv, P, hs) as ``present``; ``allowed`` is (B, 1, T, S) bool. The softmax runs in float32
        (softmax_precision 1). Returns (B*T, nh*hs)."""
        inputs = [q, k, v, allowed] + list(past or ())
        outputs = [None] + list(present or ())
        y = self.named("Attention", inputs, outputs, q_num_heads=n_heads, kv_num_heads=n_kv, scale=scale,
                       is_causal=0, softmax_precision=self.float)[0]                    # (B, T, nh*hs)
        return self.op("Reshape", y, self.const([-1, n_heads * head_dim]))         # (B*T, nh*hs)

    def heads(self, x2d: str, n: int, head_dim: int) -> str:
        """(B*T, n*hs) -> (B, n, T, hs), with B and T from ``self.bt``."""
        x = self.op("Reshape", x2d, self.op("Concat", self.bt, self.const([n, head_dim]), axis=0))   # (B, T, n, hs)
        return self.op("Transpose", x, perm=[0, 2, 1, 3])

    def attend(self, q: str, k: str, v: str, bias: str, n_heads: int, n_kv: int, head_dim: int, scale: float) -> str:
        """Softmax attention of (B, nh, T, hs) queries over (B, nkv, S, hs) keys and values; each key/value
        head serves nh / nkv query heads (queries grouped, nothing repeated); scores and softmax in
        float32; ``bias`` is (B, 1, 1, T, S). Returns (B*T, nh*hs)."""
        rep = n_heads // n_kv
        q5 = self.op("Reshape", q, self.const([0, n_kv, rep, -1, head_dim]))          # (B, nkv, rep, T, hs)
        k5 = self.op("Transpose", self.unsqueeze(k, 2), perm=[0, 1, 2, 4, 3])        # (B, nkv, 1, hs, S)
        scores = self.op("MatMul", q5, k5)                                          # (B, nkv, rep, T, S)
        if self.dtype != self.float:
            scores = self.cast(scores, self.float)
        scores = self.op("Add", self.op("Mul", scores, self.const(scale)), bias)
        weights = self.op("Softmax", scores, axis=-1)
        if self.dtype != self.float:
            weights = self.cast(weights, self.dtype)
        out = self.op("MatMul", weights, self.unsqueeze(v, 2))                      # (B, nkv, rep, T, hs)
        out = self.op("Reshape", out, self.const([0, n_heads, -1, head_dim]))        # (B, nh, T, hs)
        out = self.op("Transpose", out, perm=[0, 2, 1, 3])                          # (B, T, nh, hs)
        return self.op("Reshape", out, self.const([-1, n_heads * head_dim]))        # (B*T, nh*hs)

    def attention_mask(self, input_ids: str, attention_mask: str) -> str:
        """Where query i (absolute position P + i) may attend key j: j <= P + i and the mask keeps j. For the
        Attention node a (B, 1, T, S) bool; for the decomposition an additive float32 bias (B, 1, 1, T, S),
        0 where allowed and float32's minimum elsewhere (a fully masked row stays finite)."""
        t = self.op("Gather", self.op("Shape", input_ids), self.const(1))            # T
        s = self.op("Gather", self.op("Shape", attention_mask), self.const(1))       # S
        past = self.op("Sub", s, t)
        q_pos = self.unsqueeze(self.op("Add", self.op("Range", self.const(0), t, self.const(1)), past), 1)  # (T, 1)
        k_pos = self.unsqueeze(self.op("Range", self.const(0), s, self.const(1)), 0)                      # (1, S)
        causal = self.op("Not", self.op("Greater", k_pos, q_pos))                    # (T, S)
        axes = (1, 2) if self.fused else (1, 2, 3)
        keep = self.op("Cast", self.unsqueeze(attention_mask, *axes), to=9)         # (B, 1, [1,] 1, S) bool
        allowed = self.op("And", causal, keep)                                      # (B, 1, [1,] T, S)
        if self.fused:
            return allowed
        return self.op("Where", allowed, self.const(0.0), self.const(FLOAT32_MIN))

    def positions_from_mask(self, attention_mask: str) -> str:
        """Positions as ``generate()`` builds them without a cache: real tokens count 0, 1, 2 …"""
        pos = self.op("Sub", self.op("CumSum", attention_mask, self.const(1)), self.const(1))
        return self.op("Max", pos, self.const(0))


def _is_int(value) -> bool:
    arr = np.asarray(value)
    return arr.dtype.kind in "iub"
