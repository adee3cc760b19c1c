"""The decoder of each known family as an ONNX graph, read from its config dataclass; weights are
asked for by hub name (see :class:`~.weights.WeightPlan`).

Every family takes the same inputs and gives the same outputs, those optimum's
``text-generation-with-past`` and transformers.js use: ``input_ids`` (batch_size, sequence_length),
``attention_mask`` (batch_size, total_sequence_length), ``position_ids`` (batch_size, sequence_length),
``past_key_values.N.key`` / ``.value`` (batch_size, kv_heads, past_sequence_length, head_dim) in,
``logits`` (batch_size, sequence_length, vocab) and ``present.N.key`` / ``.value`` (batch_size, kv_heads,
total_sequence_length, head_dim) out. Without the cache: ``input_ids`` and ``attention_mask`` in (positions
follow the mask as the reference models compute them), ``logits`` out.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph

BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


def inv_freq(rotary_dims: int, theta: float, scaling=None) -> np.ndarray:
    """Inverse rotary frequencies (float32) with linear or Llama 3 scaling, as ``_common.rope_inv_freq``."""
    inv = (1.0 / (theta ** (np.arange(0, rotary_dims, 2, dtype=np.int64).astype(np.float32) / rotary_dims))).astype(np.float32)
    if scaling is None:
        return inv
    if scaling.rope_type == "linear":
        return (inv / scaling.factor).astype(np.float32)
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen, high_wavelen = old_len / scaling.low_freq_factor, old_len / scaling.high_freq_factor
        wavelen = (2 * math.pi / inv).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv).astype(np.float32)
        smooth = ((old_len / wavelen - scaling.low_freq_factor)
                  / (scaling.high_freq_factor - scaling.low_freq_factor)).astype(np.float32)
        blended = ((1 - smooth) * scaled / scaling.factor + smooth * scaled).astype(np.float32)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, blended, scaled).astype(np.float32)
    raise ValueError(f"rope scaling {scaling.rope_type!r}")


class Decoder:
    """Inputs, the attention bias and the key/value cache plumbing every family shares."""

    def __init__(self, g: Graph, cfg, kv_cache: bool):
        from onnx import TensorProto, helper

        self.g, self.cfg, self.kv = g, cfg, kv_cache
        i64 = TensorProto.INT64
        g.inputs.append(helper.make_tensor_value_info("input_ids", i64, [BATCH, SEQ]))
        g.inputs.append(helper.make_tensor_value_info("attention_mask", i64, [BATCH, TOTAL if kv_cache else SEQ]))
        if kv_cache:
            g.inputs.append(helper.make_tensor_value_info("position_ids", i64, [BATCH, SEQ]))
            for i in range(cfg.n_layers):
                for part in ("key", "value"):
                    g.inputs.append(helper.make_tensor_value_info(
                        f"past_key_values.{i}.{part}", g.dtype, [BATCH, cfg.n_kv_heads, PAST, cfg.head_dim]))
        g.bt = g.op("Shape", "input_ids")                                              # [B, T]
        self.btc = g.op("Concat", g.bt, g.const([cfg.dim]), axis=0)                    # [B, T, C]
        self.bt_any = g.op("Concat", g.bt, g.const([-1]), axis=0)                      # [B, T, -1]
        self.positions = "position_ids" if kv_cache else g.positions_from_mask("attention_mask")
        self.mask = g.attention_mask("input_ids", "attention_mask")      # (B, 1, T, S) bool | (B, 1, 1, T, S) bias

    def block(self, x: str, module: str) -> str:
        """Enter block ``module``: ``x`` leaves the previous block as (B, T, C), as the reference's blocks
        return it (what parity's layer search compares), and is (B*T, C) inside."""
        g = self.g
        if g.scope:
            x = g.op("Reshape", x, self.btc)                                            # (B, T, C)
        g.enter(module)
        return g.op("Reshape", x, g.const([-1, self.cfg.dim]))                        # (B*T, C)

    def attention(self, i: int, q: str, k: str, v: str, n_kv: int, scale: float, rotary=None) -> str:
        """Attention of layer ``i`` over the 2-D projections q (B*T, nh*hs), k and v (B*T, nkv*hs), the
        past keys and values joined in (present out); ``rotary`` = (cos, sin, rotary_dims) rotates q and k.
        Opset 23's Attention and RotaryEmbedding nodes where the graph uses them, else the decomposition.
        Returns (B*T, nh*hs)."""
        g, nh, hd = self.g, self.cfg.n_heads, self.cfg.head_dim
        if g.fused:
            q, k, v = (g.op("Reshape", t, self.bt_any) for t in (q, k, v))              # (B, T, n*hs)
            if rotary is not None:
                cos, sin, rd = rotary
                q, k = g.rotary_op(q, cos, sin, nh, rd, hd), g.rotary_op(k, cos, sin, n_kv, rd, hd)
            past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value") if self.kv else None
            present = (f"present.{i}.key", f"present.{i}.value") if self.kv else None
            return g.attention_op(q, k, v, self.mask, nh, n_kv, hd, scale, past, present)
        q, k, v = g.heads(q, nh, hd), g.heads(k, n_kv, hd), g.heads(v, n_kv, hd)       # (B, n, T, hs)
        if rotary is not None:
            cos, sin, rd = rotary
            q, k = g.rotate(q, cos, sin, rd, hd), g.rotate(k, cos, sin, rd, hd)
        k, v = self.cache(i, k, v)                                                      # (B, nkv, S, hs)
        return g.attend(q, k, v, self.mask, nh, n_kv, hd, scale)

    def cache(self, i: int, k: str, v: str) -> tuple[str, str]:
        """Keys and values (B, nkv, T, hs) joined to the past ones: (B, nkv, S, hs), returned as present."""
        if not self.kv:
            return k, v
        g = self.g
        k = g.out("Concat", f"past_key_values.{i}.key", k, to=f"present.{i}.key", axis=2)
        v = g.out("Concat", f"past_key_values.{i}.value", v, to=f"present.{i}.value", axis=2)
        return k, v

    def embed(self, table: str) -> str:
        """The rows of ``table`` for the ids, looked up in the embedding's own scope (``/model/embed_tokens/…``)
        so that parity can cut the graph down to it and check every row."""
        g = self.g
        outer = g.scope
        g.enter(table.removesuffix(".weight"))
        x = g.op("Gather", table, "input_ids")                                          # (B, T, C)
        g.scope = outer
        return g.op("Reshape", x, g.const([-1, self.cfg.dim]))                          # (B*T, C)

    def logits(self, x: str, weight: str) -> None:
        from onnx import helper

        g = self.g
        y = g.linear(x, weight)                                                         # (B*T, V)
        shape = g.op("Concat", g.bt, g.const([self.cfg.vocab_size]), axis=0)
        g.out("Reshape", y, shape, to="logits")
        g.outputs.insert(0, helper.make_tensor_value_info("logits", g.dtype, [BATCH, SEQ, self.cfg.vocab_size]))
        if self.kv:
            for i in range(self.cfg.n_layers):
                for part in ("key", "value"):
                    g.outputs.append(helper.make_tensor_value_info(
                        f"present.{i}.{part}", g.dtype, [BATCH, self.cfg.n_kv_heads, TOTAL, self.cfg.head_dim]))


def llama(g: Graph, w, cfg, kv_cache: bool) -> None:
    """Llama 1/2/3 and Qwen2 (q/k/v biases): RMSNorm, SwiGLU, rotary with scaling, grouped-query attention."""
    d = Decoder(g, cfg, kv_cache)
    cos, sin = g.rotary_cos_sin(d.positions, inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
    scale = cfg.head_dim ** -0.5
    x = d.embed(w("model.embed_tokens.weight"))
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        x = d.block(x, p[:-1])
        def b(n, p=p):
            return w(p + n)
        h = g.rms_norm(x, b("input_layernorm.weight"), cfg.norm_eps)
        proj = {}
        for name in ("q", "k", "v"):
            bias = b(f"self_attn.{name}_proj.bias") if cfg.qkv_bias else None
            proj[name] = g.linear(h, b(f"self_attn.{name}_proj.weight"), bias)
        att = d.attention(i, proj["q"], proj["k"], proj["v"], cfg.n_kv_heads, scale, (cos, sin, cfg.head_dim))
        o_bias = b("self_attn.o_proj.bias") if cfg.o_bias else None
        x = g.op("Add", x, g.linear(att, b("self_attn.o_proj.weight"), o_bias))
        h = g.rms_norm(x, b("post_attention_layernorm.weight"), cfg.norm_eps)
        mb = (lambda n: b(f"mlp.{n}.bias")) if cfg.mlp_bias else (lambda n: None)
        gate = g.activation(g.linear(h, b("mlp.gate_proj.weight"), mb("gate_proj")), cfg.activation)
        up = g.linear(h, b("mlp.up_proj.weight"), mb("up_proj"))
        x = g.op("Add", x, g.linear(g.op("Mul", gate, up), b("mlp.down_proj.weight"), mb("down_proj")))
    x = d.block(x, "")
    d.logits(g.rms_norm(x, w("model.norm.weight"), cfg.norm_eps), w("lm_head.weight"))


def gpt2(g: Graph, w, cfg, kv_cache: bool) -> None:
    """GPT-2: learned positions, LayerNorm, fused Conv1D q/k/v ([in, out] weights), tanh GELU."""
    d = Decoder(g, cfg, kv_cache)
    hd, c = cfg.head_dim, cfg.dim
    x = d.embed(w("transformer.wte.weight"))
    pos = g.op("Reshape", g.op("Gather", w("transformer.wpe.weight"), d.positions), g.const([-1, c]))
    x = g.op("Add", x, pos)
    for i in range(cfg.n_layers):
        p = f"transformer.h.{i}."
        x = d.block(x, p[:-1])
        h = g.layer_norm(x, w(p + "ln_1.weight"), w(p + "ln_1.bias"), cfg.norm_eps)
        qkv = g.linear(h, w(p + "attn.c_attn.weight"), w(p + "attn.c_attn.bias"), transposed=False)   # (B*T, 3C)
        q, k, v = (g.slice(qkv, j * c, (j + 1) * c) for j in range(3))                  # (B*T, C) each
        scale = hd ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale = scale / float(i + 1)
        att = d.attention(i, q, k, v, cfg.n_heads, scale)
        x = g.op("Add", x, g.linear(att, w(p + "attn.c_proj.weight"), w(p + "attn.c_proj.bias"), transposed=False))
        h = g.layer_norm(x, w(p + "ln_2.weight"), w(p + "ln_2.bias"), cfg.norm_eps)
        h = g.activation(g.linear(h, w(p + "mlp.c_fc.weight"), w(p + "mlp.c_fc.bias"), transposed=False), cfg.activation)
        x = g.op("Add", x, g.linear(h, w(p + "mlp.c_proj.weight"), w(p + "mlp.c_proj.bias"), transposed=False))
    x = d.block(x, "")
    x = g.layer_norm(x, w("transformer.ln_f.weight"), w("transformer.ln_f.bias"), cfg.norm_eps)
    d.logits(x, w("lm_head.weight"))


def gptneox(g: Graph, w, cfg, kv_cache: bool) -> None:
    """GPT-NeoX: fused per-head q/k/v, rotary on the first ``rotary_pct`` of each head, parallel residual."""
    d = Decoder(g, cfg, kv_cache)
    hd, rd = cfg.head_dim, cfg.rotary_dims
    cos, sin = g.rotary_cos_sin(d.positions, inv_freq(rd, cfg.rope_theta))
    x = d.embed(w("gpt_neox.embed_in.weight"))
    for i in range(cfg.n_layers):
        p = f"gpt_neox.layers.{i}."
        x = d.block(x, p[:-1])
        bias = (lambda n: w(p + n)) if cfg.attention_bias else (lambda n: None)
        h = g.layer_norm(x, w(p + "input_layernorm.weight"), w(p + "input_layernorm.bias"), cfg.norm_eps)
        qkv = g.linear(h, w(p + "attention.query_key_value.weight"), bias("attention.query_key_value.bias"))
        qkv = g.op("Reshape", qkv, g.const([-1, cfg.n_heads, 3 * hd]))                   # (B*T, nh, 3hs)
        q, k, v = (g.op("Reshape", g.slice(qkv, j * hd, (j + 1) * hd), g.const([-1, cfg.n_heads * hd]))
                   for j in range(3))                                                    # (B*T, nh*hs) each
        att = d.attention(i, q, k, v, cfg.n_heads, hd ** -0.5, (cos, sin, rd))
        attn = g.linear(att, w(p + "attention.dense.weight"), bias("attention.dense.bias"))
        ln2 = (lambda y: g.layer_norm(y, w(p + "post_attention_layernorm.weight"),
                                      w(p + "post_attention_layernorm.bias"), cfg.norm_eps))
        mlp = (lambda y: g.linear(g.activation(g.linear(y, w(p + "mlp.dense_h_to_4h.weight"), w(p + "mlp.dense_h_to_4h.bias")),
                                               cfg.activation), w(p + "mlp.dense_4h_to_h.weight"), w(p + "mlp.dense_4h_to_h.bias")))
        if cfg.use_parallel_residual:
            x = g.op("Add", g.op("Add", x, attn), mlp(ln2(x)))
        else:
            x = g.op("Add", x, attn)
            x = g.op("Add", x, mlp(ln2(x)))
    x = d.block(x, "")
    x = g.layer_norm(x, w("gpt_neox.final_layer_norm.weight"), w("gpt_neox.final_layer_norm.bias"), cfg.norm_eps)
    d.logits(x, w("embed_out.weight"))


DECODERS = {"llama": llama, "qwen2": llama, "gpt2": gpt2, "gptneox": gptneox}
