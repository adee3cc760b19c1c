import json

import pytest
import torch

import modelport
from modelport.errors import ConfigNeededError, FormatError, UnsupportedError
from modelport.formats.base import Options
from tests.conftest import bitwise_equal


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)  # transformers initialises weights from the global generator
    cfg = GPT2Config(n_embd=24, n_layer=2, n_head=4, vocab_size=37, n_positions=16)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    model = tiny_gpt2()
    model.save_pretrained(d)
    (d / "tokenizer.json").write_text('{"model": {"vocab": {}}}')
    return d, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_reads_a_transformers_directory(gpt2_dir):
    d, sd = gpt2_dir
    with modelport.open(d) as src:
        assert src.format == "hf"
        assert src.config["model_type"] == "gpt2"
        assert "tokenizer.json" in src.side_files and "config.json" not in src.side_files
        full = src.state_dict()
        for name in src.names():
            assert bitwise_equal(full[name], sd[name]), name


def test_sharded_round_trip_loads_in_transformers(gpt2_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    d, sd = gpt2_dir
    out = tmp_path / "sharded"
    modelport.convert(d, out, to="hf", shard_size=20_000)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert (out / "tokenizer.json").read_text() == (d / "tokenizer.json").read_text()
    loaded = GPT2LMHeadModel.from_pretrained(out).eval()
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, sd[name]), name
    # and back to one file
    single = tmp_path / "single"
    modelport.convert(out, single, to="hf")
    assert modelport.diff(d, single)


def test_sharded_transformers_directory_is_read(tmp_path):
    model = tiny_gpt2(1)
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    with modelport.open(tmp_path / "m") as src:
        for name, t in model.state_dict().items():
            if name in src.names():
                assert torch.equal(src.read(name), t), name


def test_writing_hf_without_config_names_the_option(tmp_path):
    from safetensors.torch import save_file

    save_file({"mystery.weight": torch.ones(3)}, tmp_path / "w.safetensors")
    with pytest.raises(ConfigNeededError, match="config=.config.json."):
        modelport.convert(tmp_path / "w.safetensors", tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_missing_shard_is_a_clear_error(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    out = tmp_path / "sharded"
    modelport.convert(d, out, to="hf", shard_size=20_000)
    next(out.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FormatError, match="incomplete"):
        modelport.open(out)


def test_bare_weights_never_get_a_guessed_config_silently(tmp_path):
    """The shipped GPT-2 has 4 heads; its weights cannot say so. Without --config nothing is written and the
    error lists what is needed; --assume-config writes the guesses and records them in the weights' metadata."""
    from pathlib import Path

    from safetensors import safe_open

    example = Path(__file__).resolve().parents[2] / "examples" / "tiny-gpt2.pt"
    out = tmp_path / "out"
    with pytest.raises(ConfigNeededError, match=r"n_head \(would guess 1\), layer_norm_epsilon.*assume_config=True"):
        modelport.convert(example, out, to="hf")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    result = modelport.convert(example, out, to="hf", options=Options(assume_config=True))
    assert any("assumed: n_head" in n for n in result.notes)
    with safe_open(out / "model.safetensors", "np") as f:
        recorded = json.loads(f.metadata()["modelport.assumed_config"])
    assert recorded == {"n_head": 1, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    assert "_modelport_assumed" not in json.loads((out / "config.json").read_text())
