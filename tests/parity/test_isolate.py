"""The layer search judges each block fed the reference's input: a small systematic fault is named where it
is planted even when the residual stream's rounding hides it at that block, and an honest export blames
no block."""

from __future__ import annotations

import json

import pytest
import torch

from modelport.models.runnable import example_feeds, load_runnable
from modelport.parity.layers import first_divergence
from modelport.parity.metrics import tolerance

from . import faults

FAULT = "model.layers.2.self_attn.o_proj.weight"


@pytest.fixture(scope="module")
def massive(tmp_path_factory):
    """A 6-layer tiny Llama whose embedding carries one huge channel (as real LMs' residual streams do), and
    the same model with layer 2's o_proj scaled by 1.001. Compared after a whole forward pass, layer 2's
    output differs from float64 by less than 10 times the float32 reference's own error there (the huge
    channel's rounding dominates), so the statistic of whole-model block outputs names no layer at all
    ("after the last block") although the logits fail at 80 floors."""
    from tests.models import tiny

    hf = tiny.llama(seed=3, num_hidden_layers=6)
    state, config = dict(tiny.hf_state_dict(hf)), hf.config.to_dict()
    emb = state["model.embed_tokens.weight"].clone()
    emb[:, 0] *= 3e4
    state["model.embed_tokens.weight"] = emb
    root = tmp_path_factory.mktemp("massive")
    ref = faults.write_dir(root / "ref", state, config)
    bad = faults.write_dir(root / "bad", faults.scaled(state, FAULT, 1.001), config)
    return root, ref, bad


def _divergence(ref_path, cand):
    ref = load_runnable(ref_path)
    feeds = example_feeds(ref, batch=1, seq_len=8, seed=0, left_pad=0)
    return first_divergence(ref, cand, feeds, tolerance("float32", None, None), factor=10.0)


def test_a_small_systematic_fault_is_named_at_its_block(cli, massive):
    _, ref, bad = massive
    res = cli("parity", str(ref), str(bad), "--seq-len", "8", "--new-tokens", "2", "--json")
    assert res.returncode == 1, res.stderr
    div = json.loads(res.stdout)["candidates"][0]["first_divergence"]
    assert (div["layer"], div["name"], div["matched"]) == (2, "model.layers.2.self_attn", [0, 1]), div
    assert div["fed"] == 6 and div["floors"] > 1000          # a 0.1% change is thousands of one block's roundings


def test_each_format_names_the_block_and_an_honest_one_blames_none(cli, massive):
    root, ref, bad = massive
    made = {}
    for tag, src in (("bad", bad), ("ok", ref)):
        for name, args in (("builder.onnx", ("--exporter", "builder")), ("torch.onnx", ("--exporter", "torch")),
                           ("ts", ("--to", "torchscript"))):
            dst = root / f"{tag}-{name}"
            assert cli("convert", str(src), str(dst), *args, "--no-manifest").returncode == 0, (tag, name)
            made[tag, name] = dst
    for name in ("builder.onnx", "torch.onnx", "ts"):
        div = _divergence(ref, load_runnable(made["bad", name]))
        part = "model.layers.2" if name == "builder.onnx" else "model.layers.2.self_attn"   # the builder scopes blocks only
        assert (div.layer, div.name, div.fed) == (2, part, 6), (name, div)
        honest = _divergence(ref, load_runnable(made["ok", name]))
        assert (honest.layer, honest.name, honest.matched) == (None, None, list(range(6))), (name, honest)
    honest = _divergence(ref, load_runnable(ref, engine="reference"))
    assert honest.layer is None and honest.name is None and honest.fed == 6


def test_a_torchscript_export_with_another_rope_theta_is_named_at_the_first_attention(cli, massive, tmp_path):
    """A script's blocks are replayed with the calling convention of modelport's own model; their position inputs
    are the candidate's own (its rotary table), so a changed rope theta is named where it acts, not "after the
    last block"."""
    import shutil

    _, ref, _ = massive
    theta = tmp_path / "theta"
    shutil.copytree(ref, theta)
    config = json.loads((theta / "config.json").read_text())
    rope = config.get("rope_parameters") or config
    rope["rope_theta"] = rope.get("rope_theta", 10000.0) * 4
    (theta / "config.json").write_text(json.dumps(config))
    ts = tmp_path / "theta.ts"
    assert cli("convert", str(theta), str(ts), "--to", "torchscript", "--no-manifest").returncode == 0
    res = cli("parity", str(ref), str(ts), "--seq-len", "8", "--new-tokens", "2", "--json")
    assert res.returncode == 1, res.stderr
    div = json.loads(res.stdout)["candidates"][0]["first_divergence"]
    assert (div["layer"], div["name"], div["method"]) == (0, "model.layers.0.self_attn", "torchscript-replay"), div


def test_a_block_overflowing_in_float16_is_non_finite_at_that_block(massive):
    _, ref, _ = massive
    cand = load_runnable(ref, dtype="float16")
    with torch.no_grad():
        cand.module.model.layers[3].mlp.down_proj.weight.mul_(1e6)
    r = load_runnable(ref)
    div = first_divergence(r, cand, example_feeds(r, batch=1, seq_len=8, seed=0, left_pad=0),
                           tolerance("float16", None, None), factor=10.0)
    assert div.layer == 3 and div.max_abs is None and "non-finite" in div.describe()


def test_a_traced_bert_is_fed_block_by_block(cli, tmp_path):
    """A BERT (no modelport family: run by transformers, TorchScript by tracing) whose traced layers take the
    attention mask as a tensor: each is replayed with the fed input; a shifted bias is named at its layer."""
    import transformers
    from safetensors.torch import load_file, save_file

    from tests.models.tiny import randomize

    cfg = transformers.BertConfig(vocab_size=37, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=40, max_position_embeddings=64)
    src = tmp_path / "bert"
    randomize(transformers.BertModel(cfg), 5).save_pretrained(src)
    state = load_file(src / "model.safetensors")
    bias = state["encoder.layer.1.output.dense.bias"].clone()
    bias[:12] += 0.01
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    save_file({**state, "encoder.layer.1.output.dense.bias": bias}, bad / "model.safetensors")
    for d, name in ((src, "ok.ts"), (bad, "bad.ts")):
        assert cli("convert", str(d), str(tmp_path / name), "--to", "torchscript", "--no-manifest").returncode == 0
    ref = load_runnable(src, engine="transformers")
    feeds = example_feeds(ref, batch=1, seq_len=8, seed=0, left_pad=0)
    tol = tolerance("float32", None, None)
    ok = first_divergence(ref, load_runnable(tmp_path / "ok.ts"), feeds, tol, factor=10.0)
    assert (ok.layer, ok.name, ok.fed, ok.method) == (None, None, 3, "torchscript-replay"), ok
    div = first_divergence(ref, load_runnable(tmp_path / "bad.ts"), feeds, tol, factor=10.0)
    assert (div.layer, div.name, div.fed) == (1, "encoder.layer.1.output", 3), div
