"""Meta Llama checkpoints: params.json <-> config.json, shard merge/split, bit-exact round trips
with HF directories saved by transformers, and logits of a Meta-style reference on the Meta
weights against transformers' LlamaForCausalLM on the HF weights."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import modelport
from modelport import formats
from modelport.errors import FormatError, LayoutError, UnsupportedError
from modelport.formats.base import Options
from modelport.atomic import MARKER
from modelport.formats.meta import HF_CONFIG, is_llama3, split_dim
from modelport.models.families.llama import config_from_meta_params, params_for
from modelport.models.families.llama import meta_ffn_dim as ffn_dim, meta_ffn_params as ffn_params
from tests.conftest import bitwise_equal

LLAMA3 = dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=38, rope_theta=500000.0, max_position_embeddings=16384, rms_norm_eps=1e-5,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192})
LLAMA2 = dict(hidden_size=48, intermediate_size=128, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=6,
              vocab_size=38, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-6)
LLAMA2_GQA = dict(LLAMA2, num_key_value_heads=2)      # as Llama 2 70B: grouped-query attention, Llama 2 sharding


def hf_dir(tmp_path, spec, seed, name="hf"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)   # transformers initialises from the global generator
    model = LlamaForCausalLM(LlamaConfig(**spec)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():     # norms away from 1 so that a swapped norm shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    d = tmp_path / name
    model.save_pretrained(d)
    return d, model


def safetensors_of(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("spec, shards", [(LLAMA3, 1), (LLAMA3, 2), (LLAMA2, 2), (LLAMA2_GQA, 2)],
                         ids=["llama3", "llama3-tp2", "llama2-tp2", "llama2-gqa-tp2"])
def test_hf_meta_hf_is_bit_exact(tmp_path, spec, shards):
    src, _ = hf_dir(tmp_path, spec, seed=shards)
    meta, back = tmp_path / "meta", tmp_path / "back"
    modelport.convert(src, meta, to="meta", options=Options(shards=shards))
    assert sorted(p.name for p in meta.iterdir()) == sorted(["params.json", "generation_config.json", HF_CONFIG, MARKER]
                                                             + [f"consolidated.{i:02d}.pth" for i in range(shards)])
    modelport.convert(meta, back, to="hf")
    a, b = safetensors_of(src), safetensors_of(back)
    assert set(a) == set(b)
    for name in a:
        assert bitwise_equal(a[name], b[name]), name
    cfg_a, cfg_b = json.loads((src / "config.json").read_text()), json.loads((back / "config.json").read_text())
    assert cfg_a == cfg_b      # bos/eos ids, max positions, dtype … carried beside params.json
    # and meta -> hf -> meta gives the same shard files' tensors and the same params.json
    again = tmp_path / "again"
    modelport.convert(back, again, to="meta", options=Options(shards=shards))
    assert (again / "params.json").read_text() == (meta / "params.json").read_text()
    for i in range(shards):
        x = torch.load(meta / f"consolidated.{i:02d}.pth", weights_only=True)
        y = torch.load(again / f"consolidated.{i:02d}.pth", weights_only=True)
        assert list(x) == list(y)
        assert all(bitwise_equal(x[k], y[k]) for k in x)


def test_params_json_written_from_config(tmp_path):
    src, _ = hf_dir(tmp_path, LLAMA3, seed=5)
    modelport.convert(src, tmp_path / "meta", to="meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params == {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 38, "multiple_of": 32,
                      "ffn_dim_multiplier": 1.2, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}
    assert ffn_dim(64, 32, 1.2) == 224


def test_shard_split_dims(tmp_path):
    """Llama 1/2 split the embedding on dim 1, Llama 3 on dim 0; wo/w2 on dim 1; norms replicated."""
    for spec, emb_dim in ((LLAMA2, 1), (LLAMA3, 0)):
        src, model = hf_dir(tmp_path, spec, seed=7, name=f"hf{emb_dim}")
        out = tmp_path / f"meta{emb_dim}"
        modelport.convert(src, out, to="meta", options=Options(shards=2))
        s0 = torch.load(out / "consolidated.00.pth", weights_only=True)
        s1 = torch.load(out / "consolidated.01.pth", weights_only=True)
        full = model.state_dict()
        emb = full["model.embed_tokens.weight"]
        assert torch.equal(torch.cat([s0["tok_embeddings.weight"], s1["tok_embeddings.weight"]], dim=emb_dim), emb)
        assert torch.equal(torch.cat([s0["layers.0.attention.wo.weight"], s1["layers.0.attention.wo.weight"]], dim=1),
                           full["model.layers.0.self_attn.o_proj.weight"])
        assert torch.equal(torch.cat([s0["layers.1.feed_forward.w2.weight"], s1["layers.1.feed_forward.w2.weight"]], dim=1),
                           full["model.layers.1.mlp.down_proj.weight"])
        assert torch.equal(torch.cat([s0["output.weight"], s1["output.weight"]], dim=0), full["lm_head.weight"])
        assert torch.equal(s0["norm.weight"], s1["norm.weight"])
        assert torch.equal(s0["norm.weight"], full["model.norm.weight"])


def test_split_not_divisible_fails_clearly(tmp_path):
    src, _ = hf_dir(tmp_path, LLAMA3, seed=3)
    with pytest.raises(UnsupportedError, match=r"cannot be split into 4 model-parallel shards on dim 0.*38"):
        modelport.convert(src, tmp_path / "meta", to="meta", options=Options(shards=4))
    assert not (tmp_path / "meta").exists()


# -- a Meta-style reference (adjacent-pair complex rotary, as in Meta's llama3 model.py) ------------------

def _scale_freqs(freqs, factor, low=1.0, high=4.0, old_context=8192):
    low_wavelen, high_wavelen = old_context / low, old_context / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=freqs.dtype)


def _freqs_cis(head_dim, end, theta, scaled_factor):
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if scaled_factor:
        freqs = _scale_freqs(freqs, scaled_factor)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)             # (T, head_dim/2) complex


def _rotary(x, freqs_cis):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))   # (B, T, H, head_dim/2)
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def meta_reference_logits(sd, params, tokens):
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads", n_heads)
    hd, eps = dim // n_heads, params["norm_eps"]
    B, T = tokens.shape
    freqs = _freqs_cis(hd, T, params.get("rope_theta", 10000.0), params.get("rope_scaling_factor", 8.0) if params.get("use_scaled_rope") else 0)
    mask = torch.full((T, T), float("-inf")).triu(1)
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        p = lambda n: sd[f"layers.{i}.{n}.weight"]  # noqa: E731
        x = _rms(h, p("attention_norm"), eps)
        q = (x @ p("attention.wq").T).view(B, T, n_heads, hd)
        k = (x @ p("attention.wk").T).view(B, T, n_kv, hd)
        v = (x @ p("attention.wv").T).view(B, T, n_kv, hd)
        q, k = _rotary(q, freqs), _rotary(k, freqs)
        k = k.repeat_interleave(n_heads // n_kv, dim=2)
        v = v.repeat_interleave(n_heads // n_kv, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                 # (B, H, T, hd)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        h = h + (att @ v).transpose(1, 2).reshape(B, T, dim) @ p("attention.wo").T
        x = _rms(h, p("ffn_norm"), eps)
        h = h + (torch.nn.functional.silu(x @ p("feed_forward.w1").T) * (x @ p("feed_forward.w3").T)) @ p("feed_forward.w2").T
    return _rms(h, sd["norm.weight"], eps) @ sd["output.weight"].T


@pytest.mark.parametrize("spec", [LLAMA3, LLAMA2], ids=["llama3-gqa-scaled", "llama2"])
def test_meta_reference_on_meta_weights_matches_transformers(tmp_path, spec):
    src, model = hf_dir(tmp_path, spec, seed=11)
    meta = tmp_path / "meta"
    modelport.convert(src, meta, to="meta", options=Options(shards=2))
    params = json.loads((meta / "params.json").read_text())
    with formats.open(meta) as ms:    # shards merged on read
        sd = ms.state_dict()
    tokens = torch.randint(0, spec["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(tokens).logits
        got = meta_reference_logits(sd, params, tokens)
    assert (got - want).abs().max().item() < 1e-5
    # the same weights without the rotary permutation give other logits (the test can fail)
    sd_wrong = dict(sd, **{k: v for k, v in model.state_dict().items() if False})
    sd_wrong["layers.0.attention.wq.weight"] = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    with torch.no_grad():
        assert (meta_reference_logits(sd_wrong, params, tokens) - want).abs().max().item() > 1e-4


# -- reading checkpoints written by torch.save, as Meta's are -----------------------------------------

def _meta_checkpoint(tmp_path, shards=2, extra=None):
    """A Llama-2-style checkpoint written with torch.save: rope.freqs included, vocab_size -1."""
    g = torch.Generator().manual_seed(1)
    dim, n_heads, ffn, vocab = 32, 4, 96, 22
    full = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g), "norm.weight": torch.randn(dim, generator=g),
            "output.weight": torch.randn(vocab, dim, generator=g), "rope.freqs": torch.randn(dim // n_heads // 2, generator=g)}
    for n, shape in (("attention.wq", (dim, dim)), ("attention.wk", (dim, dim)), ("attention.wv", (dim, dim)),
                     ("attention.wo", (dim, dim)), ("feed_forward.w1", (ffn, dim)), ("feed_forward.w2", (dim, ffn)),
                     ("feed_forward.w3", (ffn, dim)), ("attention_norm", (dim,)), ("ffn_norm", (dim,))):
        full[f"layers.0.{n}.weight"] = torch.randn(shape, generator=g).half()
    d = tmp_path / "meta-src"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"dim": dim, "multiple_of": 32, "n_heads": n_heads, "n_layers": 1,
                                               "norm_eps": 1e-06, "vocab_size": -1}))
    (d / "tokenizer.model").write_bytes(b"\x0a\x03abc")
    for s in range(shards):
        part = {}
        for k, v in full.items():
            dim_ = split_dim(k, llama3=False)
            part[k] = v if dim_ is None else v.chunk(shards, dim=dim_)[s].clone()
        part.update(extra or {})
        torch.save(part, d / f"consolidated.{s:02d}.pth")
    return d, full


# params.json as Meta publishes them (sizes shrunk): Llama 1 (no n_kv_heads, vocab_size -1), Llama 2 70B (GQA,
# ffn_dim_multiplier), Llama 3.1 (GQA, rope_theta 500000, scaled rope, vocab_size set)
META_PARAMS = {
    "llama1": {"dim": 32, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-06, "vocab_size": -1},
    "llama2-gqa": {"dim": 32, "multiple_of": 32, "ffn_dim_multiplier": 1.3, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
                   "norm_eps": 1e-05, "vocab_size": -1},
    "llama3-gqa": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 22, "multiple_of": 32,
                   "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True},
}


def _meta_from_params(tmp_path, params, shards=2):
    """A checkpoint of ``params`` written with torch.save, split as Meta's code splits it."""
    from modelport.models.families.llama import meta_ffn_dim

    g = torch.Generator().manual_seed(7)
    dim, n_heads = params["dim"], params["n_heads"]
    kv = params.get("n_kv_heads", n_heads) * dim // n_heads
    ffn, vocab = meta_ffn_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier")), 22
    full = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,), "output.weight": (vocab, dim)}
    for b in range(params["n_layers"]):
        full.update({f"layers.{b}.attention.wq.weight": (dim, dim), f"layers.{b}.attention.wk.weight": (kv, dim),
                     f"layers.{b}.attention.wv.weight": (kv, dim), f"layers.{b}.attention.wo.weight": (dim, dim),
                     f"layers.{b}.feed_forward.w1.weight": (ffn, dim), f"layers.{b}.feed_forward.w2.weight": (dim, ffn),
                     f"layers.{b}.feed_forward.w3.weight": (ffn, dim), f"layers.{b}.attention_norm.weight": (dim,),
                     f"layers.{b}.ffn_norm.weight": (dim,)})
    full = {k: torch.randn(shape, generator=g).to(torch.bfloat16) for k, shape in full.items()}
    d = tmp_path / "meta-src"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(params))
    for s in range(shards):
        part = {}
        for k, v in full.items():
            split = split_dim(k, llama3=is_llama3(params, vocab))
            part[k] = v if split is None else v.chunk(shards, dim=split)[s].clone()
        torch.save(part, d / f"consolidated.{s:02d}.pth")
    return d, full


@pytest.mark.parametrize("which", META_PARAMS)
def test_meta_hf_meta_is_exact(tmp_path, which):
    """Meta -> HF -> Meta gives back the same params.json (byte for byte) and the same shards' tensors."""
    d, full = _meta_from_params(tmp_path, META_PARAMS[which])
    hf, back = tmp_path / "hf", tmp_path / "back"
    modelport.convert(d, hf, to="hf")
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["num_key_value_heads"] == META_PARAMS[which].get("n_kv_heads", 4) and cfg["vocab_size"] == 22
    modelport.convert(hf, back, to="meta", options=Options(shards=2))
    assert (back / "params.json").read_text() == (d / "params.json").read_text()
    for s in range(2):
        x = torch.load(d / f"consolidated.{s:02d}.pth", weights_only=True)
        y = torch.load(back / f"consolidated.{s:02d}.pth", weights_only=True)
        assert list(x) == list(y)
        assert all(bitwise_equal(x[k], y[k]) for k in x), which
    with modelport.open(back) as src:
        assert all(bitwise_equal(src.read(k), v) for k, v in full.items())


def test_llama3_is_told_by_params_then_by_the_embeddings_rows():
    assert is_llama3({"dim": 8, "vocab_size": -1}, vocab_rows=128256)        # params.json leaves the vocabulary out
    assert not is_llama3({"dim": 8, "vocab_size": 32000}, vocab_rows=128256)  # params.json's own vocabulary wins
    assert is_llama3({"dim": 8, "vocab_size": 32000, "rope_theta": 500000.0}) and not is_llama3({"dim": 8})


def test_reads_torch_saved_shards_and_merges(tmp_path):
    d, full = _meta_checkpoint(tmp_path)
    assert formats.detect(d).id == "meta"
    with modelport.open(d) as src:      # the config params.json implies is the Llama family's reading
        assert src.config["vocab_size"] == 22 and src.config["intermediate_size"] == 96
        assert src.side_files == {"tokenizer.model": d / "tokenizer.model"}
        for k, v in full.items():
            assert bitwise_equal(src.read(k), v), k
        assert src.span("norm.weight") is not None and src.span("layers.0.attention.wq.weight") is None


def test_meta_to_hf_drops_rope_freqs_and_carries_tokenizer(tmp_path):
    d, full = _meta_checkpoint(tmp_path)
    res = modelport.convert(d, tmp_path / "hf", to="hf")
    assert any("rope.freqs" in n for n in res.notes)
    got = safetensors_of(tmp_path / "hf")
    assert "rope.freqs" not in got and len(got) == len(full) - 1
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == b"\x0a\x03abc"
    assert bitwise_equal(got["model.layers.0.self_attn.v_proj.weight"], full["layers.0.attention.wv.weight"])
    assert not bitwise_equal(got["model.layers.0.self_attn.q_proj.weight"], full["layers.0.attention.wq.weight"])


def test_bad_checkpoints_fail_clearly(tmp_path):
    d, _ = _meta_checkpoint(tmp_path)
    (d / "consolidated.01.pth").rename(d / "consolidated.02.pth")
    with pytest.raises(FormatError, match="not numbered"):
        formats.open(d, "meta")
    (d / "consolidated.02.pth").rename(d / "consolidated.01.pth")
    (d / "params.json").write_text(json.dumps({"dim": 32, "n_heads": 4, "n_layers": 1, "vocab_size": -1, "flash": True}))
    with pytest.raises(FormatError, match="flash"):
        formats.open(d, "meta")
    (d / "params.json").unlink()
    with pytest.raises(FormatError, match="no params.json"):
        formats.open(d, "meta")


def test_unknown_tensor_in_shards_is_refused(tmp_path):
    d, _ = _meta_checkpoint(tmp_path, extra={"adapter.weight": torch.zeros(4, 4)})
    with pytest.raises(LayoutError, match="adapter.weight"):
        formats.open(d, "meta")


def test_reject_pickled_code(tmp_path):
    d, _ = _meta_checkpoint(tmp_path, shards=1)
    torch.save({"x": torch.nn.Linear(2, 2)}, d / "consolidated.00.pth")
    with pytest.raises(modelport.ModelportError):
        formats.open(d, "meta")


# -- params.json <-> config.json ------------------------------------------------------------------------

def test_ffn_params_reproduce_known_models():
    # Llama 2 7B, Llama 3 8B, Llama 2 70B (intermediate sizes as in their HF configs)
    for dim, inter in ((4096, 11008), (4096, 14336), (8192, 28672), (2048, 8192), (3072, 8192)):
        m, f = ffn_params(dim, inter)
        assert ffn_dim(dim, m, f) == inter
    assert ffn_params(4096, 11008) == (256, None)
    m, f = ffn_params(64, 7)     # odd sizes need an odd multiplier, but are still reproduced exactly
    assert ffn_dim(64, m, f) == 7 and f is not None
    with pytest.raises(UnsupportedError, match="intermediate_size 0"):
        ffn_params(64, 0)


def config_from_params(params: dict, vocab: int | None, where: str) -> dict:
    """An untied Llama's config.json from Meta's params.json."""
    return replace(config_from_meta_params(params, vocab, where), tie_word_embeddings=False).to_hf_config()


def params_from_config(config: dict, where: str) -> dict:
    """The params.json written for a model with this config.json and no params.json of its own."""
    return params_for(config, {}, where)


def test_params_config_round_trip_and_refusals():
    params = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
              "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
    cfg = config_from_params(params, None, "params.json")
    assert cfg["intermediate_size"] == 14336 and cfg["rope_scaling"]["factor"] == 8.0 and is_llama3(params)
    again = params_from_config(cfg, "x")
    assert config_from_params(again, None, "x") == cfg
    v5 = {k: v for k, v in cfg.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_theta": 500000.0, **cfg["rope_scaling"]}
    assert params_from_config(v5, "x") == again
    with pytest.raises(UnsupportedError, match="rope scaling"):
        params_from_config({**cfg, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "x")
    with pytest.raises(UnsupportedError, match="biases"):
        params_from_config({**cfg, "attention_bias": True}, "x")
    with pytest.raises(LayoutError, match="not Llama"):      # read through Llama's record: another family is refused
        params_from_config({**cfg, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "x")
    assert params_from_config({**cfg, "architectures": ["LlamaForSequenceClassification"]}, "x") == again
    assert not is_llama3({"dim": 4096, "vocab_size": -1})


def test_diff_aligns_meta_and_hf_layouts(tmp_path):
    src, model = hf_dir(tmp_path, LLAMA3, seed=13)
    meta = tmp_path / "meta"
    modelport.convert(src, meta, to="meta", options=Options(shards=2))
    assert modelport.diff(src, meta) and modelport.diff(meta, src)
    # a checkpoint converted without the rotary permutation: diff names the bug
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params.json").write_text((meta / "params.json").read_text())
    one = tmp_path / "one"
    modelport.convert(src, one, to="meta")
    sd = torch.load(one / "consolidated.00.pth", weights_only=True)
    sd["layers.1.attention.wk.weight"] = model.state_dict()["model.layers.1.self_attn.k_proj.weight"]
    torch.save(sd, bad / "consolidated.00.pth")
    report = modelport.diff(src, bad)
    (d,) = report.differences
    assert d.name == "model.layers.1.self_attn.k_proj.weight"
    assert d.explanation == ("B's layers.1.attention.wk.weight (llama-meta) holds A's tensor unchanged — "
                             "permute_rope_hf_to_meta(n_heads=2) was not applied when B was written in layout llama-meta")


@pytest.mark.parametrize("config,shards", [(LLAMA3, 1), (LLAMA3, 2), (LLAMA2, 2), (dict(LLAMA2, intermediate_size=144, vocab_size=36), 3)],
                         ids=["llama3-1", "llama3-2", "llama2-2", "llama2-3"])
def test_tied_embeddings_round_trip(tmp_path, config, shards):
    """Meta's model always has an output weight: a tied HF model writes the embedding there, and
    reading it back gives the tied HF layout again (no lm_head, tie_word_embeddings true). Llama 1/2
    sharding splits the embedding on columns and the output on rows: the tie is seen across shards."""
    src, model = hf_dir(tmp_path, dict(config, tie_word_embeddings=True), seed=17)
    assert "lm_head.weight" not in safetensors_of(src)
    meta, back = tmp_path / "meta", tmp_path / "back"
    modelport.convert(src, meta, to="meta", options=Options(shards=shards))
    parts = [torch.load(meta / f"consolidated.{k:02d}.pth", weights_only=True) for k in range(shards)]
    emb_dim = 0 if config is LLAMA3 else 1     # Llama 1/2 split the embedding on columns, the output on rows
    assert torch.equal(torch.cat([p["output.weight"] for p in parts], 0),
                       torch.cat([p["tok_embeddings.weight"] for p in parts], emb_dim))
    modelport.convert(meta, back, to="hf")
    a, b = safetensors_of(src), safetensors_of(back)
    assert set(a) == set(b) and all(bitwise_equal(a[n], b[n]) for n in a)
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is True


def test_untied_output_differing_in_one_row_is_not_read_as_tied(tmp_path):
    """Across Llama 2 shards, an output equal to the embedding but for one late row stays untied."""
    src, model = hf_dir(tmp_path, dict(LLAMA2, tie_word_embeddings=True), seed=17)
    meta = tmp_path / "meta"
    modelport.convert(src, meta, to="meta", options=Options(shards=2))
    last = meta / "consolidated.01.pth"
    s1 = torch.load(last, weights_only=True)
    s1["output.weight"] = s1["output.weight"].clone()
    s1["output.weight"][-1, -1] += 1.0
    torch.save(s1, last)
    source = modelport.open(meta)
    try:
        assert "output.weight" in source.names()
    finally:
        source.close()


def test_single_meta_shard_as_pt_with_params_as_config(tmp_path):
    """`convert consolidated.00.pth out --to hf --config params.json`: the params.json is translated."""
    d, full = _meta_checkpoint(tmp_path, shards=1)
    out = tmp_path / "hf"
    modelport.convert(d / "consolidated.00.pth", out, to="hf", options=Options(config=d / "params.json"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 32 and cfg["vocab_size"] == 22 and cfg["intermediate_size"] == 96 and "dim" not in cfg
    got = safetensors_of(out)
    q = transforms_permute(full["layers.0.attention.wq.weight"], 4)
    assert bitwise_equal(got["model.layers.0.self_attn.q_proj.weight"], q)


def transforms_permute(w, n_heads):
    from modelport.models.transforms import permute_rope_meta_to_hf

    return permute_rope_meta_to_hf(w, n_heads=n_heads).contiguous()


def test_load_model_runs_a_sharded_meta_checkpoint(tmp_path):
    """The reference Llama built from a 2-shard Meta directory (params.json, merged shards, layout
    mapped to the hub) gives transformers' logits."""
    src, model = hf_dir(tmp_path, LLAMA3, seed=19)
    meta = tmp_path / "meta"
    modelport.convert(src, meta, to="meta", options=Options(shards=2))
    ours = modelport.load_model(meta)
    tokens = torch.randint(0, LLAMA3["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(tokens) - model(tokens).logits).abs().max().item() < 1e-5


def test_carried_config_ignored_when_params_json_was_edited(tmp_path):
    src, _ = hf_dir(tmp_path, LLAMA2, seed=5)
    meta = tmp_path / "meta"
    modelport.convert(src, meta, to="meta")
    params = json.loads((meta / "params.json").read_text())
    params["norm_eps"] = 1e-3
    (meta / "params.json").write_text(json.dumps(params))
    with modelport.open(meta) as source:
        assert source.config["rms_norm_eps"] == 1e-3
        assert any(HF_CONFIG in n and "another model" in n for n in source.notes)
