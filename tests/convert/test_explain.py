"""diff names the known transform that makes two differing tensors equal."""

from __future__ import annotations

import torch

import modelport
from modelport.models import transforms
from modelport.convert.explain import explain_difference
from modelport.formats.memory import StateDictSource

LLAMA_CFG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


def DictSource(tensors=None, config=None):
    return StateDictSource(tensors or {}, "mem", config)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rope_rows_in_the_wrong_layout_with_heads_from_config():
    hf = torch.randn(64, 64, generator=_g())
    meta_rows = transforms.permute_rope_hf_to_meta(hf, n_heads=4)
    s = DictSource(config=LLAMA_CFG)
    got = explain_difference("model.layers.3.self_attn.q_proj.weight", hf, meta_rows, s, s)
    assert got == "equal after permute_rope_meta_to_hf(n_heads=4) on B — B holds Meta-layout rows in an HF-named slot"
    k = torch.randn(32, 64, generator=_g(1))
    got = explain_difference("model.layers.0.self_attn.k_proj.weight", transforms.permute_rope_hf_to_meta(k, n_heads=2), k, s, s)
    assert got.startswith("equal after permute_rope_meta_to_hf(n_heads=2) on A")


def test_rope_heads_inferred_without_config_and_meta_named_slot():
    hf = torch.randn(256, 32, generator=_g(2))          # two heads of 128
    meta = DictSource()
    got = explain_difference("layers.0.attention.wq.weight", transforms.permute_rope_meta_to_hf(hf, n_heads=2), hf, meta, meta)
    assert got == ("equal after permute_rope_hf_to_meta(n_heads=2) on A — A holds HF-layout rows in a Meta-named slot, "
                   "n_heads inferred from the shape")


def test_conv1d_transpose():
    w = torch.randn(24, 72, generator=_g(3))
    got = explain_difference("transformer.h.0.attn.c_attn.weight", w, w.T.contiguous(), DictSource(), DictSource())
    assert got.startswith("equal after transpose") and "Conv1D" in got


def test_neox_fused_qkv_order():
    n_heads, hd, dim = 3, 4, 12
    fused = torch.randn(3 * n_heads * hd, dim, generator=_g(4))
    blocked = transforms.reorder_qkv_neox_to_blocked(fused, n_heads=n_heads)
    cfg = {"model_type": "gpt_neox", "hidden_size": dim, "num_attention_heads": n_heads}
    got = explain_difference("gpt_neox.layers.0.attention.query_key_value.weight", fused, blocked, DictSource(config=cfg), DictSource(config=cfg))
    assert got.startswith("equal after reorder_qkv_blocked_to_neox(n_heads=3) on B")


def test_shard_merged_on_the_other_axis_and_concatenation_order():
    emb = torch.randn(38, 24, generator=_g(5))
    wrong_axis = torch.cat(emb.chunk(2, dim=0), dim=1)            # [19, 48]
    got = explain_difference("tok_embeddings.weight", emb, wrong_axis, DictSource(), DictSource())
    assert got == "equal after merging 2 shards on dim 1 instead of dim 0 — model-parallel shards joined on the wrong axis"
    swapped = torch.cat(list(reversed(emb.chunk(2, dim=1))), dim=1)
    got = explain_difference("tok_embeddings.weight", emb, swapped, DictSource(), DictSource())
    assert got == "equal after reordering 2 shards along dim 1 — B joins A's shards in the order 1, 0"


def test_tied_copy():
    g = _g(6)
    emb, head = torch.randn(37, 24, generator=g), torch.randn(37, 24, generator=g)
    a = DictSource({"model.embed_tokens.weight": emb, "lm_head.weight": head})
    b = DictSource({"model.embed_tokens.weight": emb, "lm_head.weight": emb})
    got = explain_difference("lm_head.weight", head, emb, a, b)
    assert got == "B's lm_head.weight equals A's model.embed_tokens.weight — a tied copy of the embedding where A has weights of its own"


def test_dtype_rounding():
    x = torch.randn(5, 7, generator=_g(7))
    assert explain_difference("w", x, x.half(), DictSource(), DictSource()) == "equal after rounding A to float16 — a dtype cast"
    got = explain_difference("w", x, x.bfloat16().float(), DictSource(), DictSource())
    assert got == "equal after rounding A to bfloat16 — B went through bfloat16 and back to float32"


def test_unrelated_or_equal_tensors_get_no_explanation():
    x, y = torch.randn(8, 8, generator=_g(8)), torch.randn(8, 8, generator=_g(9))
    s = DictSource(config=LLAMA_CFG)
    assert explain_difference("model.layers.0.self_attn.q_proj.weight", x, y, s, s) is None
    assert explain_difference("model.layers.0.self_attn.q_proj.weight", x, x.clone(), s, s) is None


def test_diff_command_reports_the_transform(tmp_path):
    """End to end: an HF checkpoint whose q_proj slot holds Meta rows (the "gibberish" bug)."""
    from safetensors.torch import save_file

    q = torch.randn(64, 64, generator=_g(10))
    save_file({"model.layers.0.self_attn.q_proj.weight": q}, str(tmp_path / "a.safetensors"))
    save_file({"model.layers.0.self_attn.q_proj.weight": transforms.permute_rope_hf_to_meta(q, n_heads=4).contiguous()},
              str(tmp_path / "b.safetensors"))
    report = modelport.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    (d,) = report.differences
    assert d.explanation == ("equal after permute_rope_meta_to_hf(n_heads=4) on B — B holds Meta-layout rows in an HF-named slot, "
                             "n_heads inferred from the shape")
