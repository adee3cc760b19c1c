"""Config dataclasses built at one boundary from config.json (4.x and 5.x spellings) and params.json."""

from __future__ import annotations

import json

import pytest

from modelport.errors import FormatError, UnsupportedError
from modelport.models.config import ASSUMED_KEY, RopeScaling, config_from_hf, normalize_arch
from modelport.models.families.gpt2 import GPT2Config
from modelport.models.families.gptneox import NeoXConfig
from modelport.models.families.llama import LlamaConfig, config_from_meta_params, meta_ffn_dim, meta_ffn_params

from . import tiny

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def saved_config(hf_model, tmp_path) -> dict:
    hf_model.config.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def test_transformers5_saved_llama_reads_rope_parameters(tmp_path):
    raw = saved_config(tiny.llama(rope_scaling=LLAMA3, tie_word_embeddings=True), tmp_path)
    assert "rope_parameters" in raw and "rope_theta" not in raw     # 5.x spelling on disk
    cfg = config_from_hf(raw)
    assert cfg == LlamaConfig(n_layers=3, n_heads=4, n_kv_heads=2, dim=24, ffn_dim=40, vocab_size=37, head_dim=6,
                              norm_eps=1e-5, rope_theta=500.0, rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64),
                              max_positions=64, tie_word_embeddings=True)


def test_transformers4_spelling_reads_the_same():
    v4 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 24, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 40, "vocab_size": 37, "num_hidden_layers": 3,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 500.0,
          "rope_scaling": {"type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "rope_type"}},
          "tie_word_embeddings": True}
    v5 = {**v4, "rope_parameters": {"rope_theta": 500.0, **LLAMA3}}
    del v5["rope_theta"], v5["rope_scaling"]
    assert config_from_hf(v4) == config_from_hf(v5)


def test_neox_spellings_agree(tmp_path):
    raw5 = saved_config(tiny.gptneox(rotary_pct=0.5), tmp_path)
    assert raw5["rope_parameters"]["partial_rotary_factor"] == 0.5
    raw4 = {k: v for k, v in raw5.items() if k != "rope_parameters"}
    raw4.update(rotary_pct=0.5, rotary_emb_base=1000)
    cfg = config_from_hf(raw5)
    assert cfg == config_from_hf(raw4)
    assert (cfg.rotary_pct, cfg.rope_theta, cfg.rotary_dims) == (0.5, 1000.0, 4)


@pytest.mark.parametrize("make", [
    lambda: tiny.gpt2(), lambda: tiny.gpt2(n_inner=None, tie_word_embeddings=False),
    lambda: tiny.llama(), lambda: tiny.llama(rope_scaling=LLAMA3, head_dim=10),
    lambda: tiny.llama(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    lambda: tiny.gptneox(), lambda: tiny.gptneox(use_parallel_residual=False, rotary_pct=1.0),
])
@pytest.mark.parametrize("spelling", [4, 5])
def test_round_trip_through_to_hf_config_and_transformers(make, spelling):
    import transformers

    hf_model = make()
    cfg = config_from_hf(hf_model.config.to_dict())
    out = cfg.to_hf_config(spelling=spelling)
    assert config_from_hf(out) == cfg
    # transformers reads what we write as the same model
    again = transformers.AutoConfig.for_model(out["model_type"], **{k: v for k, v in out.items() if k != "model_type"})
    assert config_from_hf(again.to_dict()) == cfg


def test_contradictory_spellings_are_refused():
    raw = tiny.llama().config.to_dict()
    raw["rope_theta"] = 10000.0          # rope_parameters says 500
    with pytest.raises(FormatError, match="rope_parameters.rope_theta=500.0 contradicts rope_theta=10000.0"):
        config_from_hf(raw)


def test_contradictory_architecture_names_are_refused():
    with pytest.raises(FormatError, match="different architectures"):
        config_from_hf({"architectures": ["GPT2LMHeadModel"], "model_type": "llama"})


@pytest.mark.parametrize("edit, err, text", [
    ({"hidden_act": "quick_gelu"}, UnsupportedError, "activation 'quick_gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, UnsupportedError, "'yarn'"),
    ({"num_key_value_heads": 3}, FormatError, "not divisible"),
    ({"hidden_size": 0}, FormatError, "dim must be a positive integer"),
    ({"pretraining_tp": 2}, UnsupportedError, "pretraining_tp"),
])
def test_bad_values_fail_clearly(edit, err, text):
    raw = {**tiny.llama().config.to_dict(), **edit}
    raw.pop("head_dim")
    with pytest.raises(err, match=text):
        config_from_hf(raw)


def test_missing_dimension_names_the_key():
    raw = tiny.gpt2().config.to_dict()
    raw.pop("n_embd")
    raw.pop("hidden_size", None)
    with pytest.raises(FormatError, match="missing 'n_embd'"):
        config_from_hf(raw, where="x/config.json")


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UnsupportedError, match="known: gpt2, llama, gptneox"):
        config_from_hf({"architectures": ["BertModel"], "model_type": "bert"})
    with pytest.raises(UnsupportedError, match="known: gpt2, llama, gptneox"):
        normalize_arch("t5")
    assert normalize_arch("gpt_neox") == normalize_arch("GPTNeoXForCausalLM") == "gptneox"


def test_meta_params_llama3_8b():
    params = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8,
              "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True, "vocab_size": 128256}
    cfg = config_from_meta_params(params)
    assert (cfg.ffn_dim, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps) == (14336, 8, 128, 1e-5)
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert cfg.assumed == ("max_position_embeddings",)
    assert cfg.to_hf_config()[ASSUMED_KEY] == ["max_position_embeddings"]
    back = cfg.to_meta_params()
    assert config_from_meta_params(back) == cfg


def test_meta_params_llama2_takes_vocab_from_weights():
    params = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    cfg = config_from_meta_params(params, vocab_size=32000)
    assert (cfg.vocab_size, cfg.ffn_dim, cfg.n_kv_heads, cfg.rope_theta) == (32000, 11008, 32, 10000.0)
    with pytest.raises(FormatError, match="vocab_size is -1"):
        config_from_meta_params(params)
    with pytest.raises(FormatError, match="unknown keys"):
        config_from_meta_params({**params, "moe": True}, vocab_size=32000)


def test_meta_ffn_dim_matches_published_sizes():
    assert meta_ffn_dim(4096, 256, None) == 11008          # Llama 2 7B
    assert meta_ffn_dim(5120, 256, None) == 13824          # Llama 2 13B
    assert meta_ffn_dim(8192, 4096, 1.3) == 28672          # Llama 2/3 70B
    assert meta_ffn_dim(2048, 256, 1.5) == 8192            # Llama 3.2 1B


def test_dataclasses_name_their_dimensions():
    g = GPT2Config(n_layers=2, n_heads=4, dim=24, vocab_size=37, ffn_dim=40)
    n = NeoXConfig(n_layers=2, n_heads=4, dim=32, ffn_dim=44, vocab_size=37, rotary_pct=0.5)
    assert (g.head_dim, g.n_kv_heads, n.head_dim, n.n_kv_heads, n.rotary_dims) == (6, 4, 8, 4, 4)


def test_published_params_json_come_back_as_they_were():
    llama3_8b = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
                 "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
    assert config_from_meta_params(llama3_8b).to_meta_params() == llama3_8b
    assert meta_ffn_params(4096, 11008) == (256, None)       # Llama 2 7B
    assert meta_ffn_params(64, 7)[1] is not None             # odd sizes still found, with a multiplier
