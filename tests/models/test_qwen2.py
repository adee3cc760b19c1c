"""Qwen2, the family added as one record: reference logits against transformers' Qwen2ForCausalLM,
detection from weights and config, config inference, load_model, conversion and diff."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import modelport
from modelport import formats
from modelport.errors import LayoutError, UnsupportedError
from modelport.models import detect_arch, infer_config
from modelport.models.config import ASSUMED_KEY, config_from_hf

from . import tiny
from .tiny import qwen2


def bare(model, path, drop=()):
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in drop}, str(path))
    return path


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"num_key_value_heads": 1}],
                         ids=["untied", "tied", "mqa"])
def test_logits_equal_transformers_on_a_left_padded_batch(overrides):
    ours = tiny.assert_parity(qwen2(seed=5, **overrides), tol=1e-5)
    attn = ours.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    assert ours.config.family == "qwen2" and ours.config.rope_theta == 1e6


def test_detected_from_config_and_from_weights(tmp_path):
    model = qwen2()
    model.save_pretrained(tmp_path / "hf")
    with formats.open(tmp_path / "hf") as src:
        assert detect_arch(src) == "qwen2"
    with formats.open(bare(model, tmp_path / "w.safetensors")) as src:
        assert detect_arch(src) == "qwen2"
    # Llama's names without q/k/v biases, or with an o_proj bias too, stay Llama
    llama = tiny.llama()
    with formats.open(bare(llama, tmp_path / "l.safetensors")) as src:
        assert detect_arch(src) == "llama"
    with formats.open(bare(tiny.llama(attention_bias=True), tmp_path / "lb.safetensors")) as src:
        assert detect_arch(src) == "llama"


def test_config_round_trip_and_sliding_window_refused():
    raw = qwen2().config.to_dict()
    cfg = config_from_hf(raw)
    assert (cfg.family, cfg.n_kv_heads, cfg.norm_eps, cfg.max_window_layers) == ("qwen2", 2, 1e-6, 2)
    assert cfg.sliding_window == raw["sliding_window"] and not cfg.use_sliding_window
    assert config_from_hf(cfg.to_hf_config()) == cfg
    assert config_from_hf(cfg.to_hf_config(spelling=5)) == cfg
    with pytest.raises(UnsupportedError, match="sliding-window"):
        config_from_hf(qwen2(use_sliding_window=True).config.to_dict())
    with pytest.raises(UnsupportedError, match="sliding-window"):     # transformers 4.x spelling, no layer_types
        config_from_hf({**cfg.to_hf_config(), "use_sliding_window": True, "sliding_window": 16})


def test_config_inferred_from_bare_weights(tmp_path):
    model = qwen2(tie_word_embeddings=True)
    with formats.open(bare(model, tmp_path / "w.safetensors", drop=("lm_head.weight",))) as src:
        inferred = infer_config(src, assume_config=True)
    assumed = inferred.pop(ASSUMED_KEY)
    assert inferred["model_type"] == "qwen2" and inferred["rope_theta"] == 1e6 and inferred["tie_word_embeddings"]
    assert {"num_attention_heads", "num_key_value_heads", "rope_theta"} <= set(assumed)
    want = config_from_hf(model.config.to_dict())
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6, "max_position_embeddings": 64,
             "max_window_layers": 2}
    assert config_from_hf({**inferred, **heads}) == want


def test_load_model_from_hf_directory_and_bare_weights(tmp_path):
    hf_model = qwen2(seed=7)
    hf_model.save_pretrained(tmp_path / "hf")
    ids, mask = tiny.batch(seed=8)
    want = tiny.hf_logits(hf_model, ids, mask)
    for path, kw in ((tmp_path / "hf", {}), (bare(hf_model, tmp_path / "w.safetensors"), {"arch": "qwen2",
                                                                                          "config": hf_model.config.to_dict()})):
        model = modelport.load_model(path, **kw)
        assert model.modelport_arch == "qwen2" and model.modelport_assumed == []
        with torch.no_grad():
            assert (model(ids, mask) - want)[mask.bool()].abs().max().item() <= 1e-5


def test_convert_to_hf_and_diff(tmp_path):
    hf_model = qwen2(seed=9)
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    src = bare(hf_model, tmp_path / "w.safetensors")
    modelport.convert(src, tmp_path / "out", to="hf", options=modelport.Options(config=tmp_path / "config.json"))
    assert modelport.diff(src, tmp_path / "out")
    other = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    other["model.layers.1.self_attn.k_proj.bias"] += 1
    save_file(other, str(tmp_path / "other.safetensors"))
    report = modelport.diff(src, tmp_path / "other.safetensors")
    assert not report and [d.name for d in report.differences] == ["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(LayoutError, match="llama-meta is for llama"):
        modelport.convert(tmp_path / "out", tmp_path / "meta", to="meta")
