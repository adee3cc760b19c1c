"""load_model: any readable checkpoint of a known family becomes a runnable model, loaded strictly."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.errors import ConfigNeededError, LayoutError, UnsupportedError
from modelport.models.loader import example_inputs

from . import tiny


def save_bare(state: dict, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


def assert_same_logits(model, hf_model):
    ids, mask = tiny.batch(seed=8)
    with torch.no_grad():
        got = model(ids, mask)
    want = tiny.hf_logits(hf_model, ids, mask)
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", tiny.families())
def test_hf_directory_loads_and_matches_transformers(family, tmp_path):
    hf_model = tiny.build(family, seed=21)
    hf_model.save_pretrained(tmp_path)
    model = modelport.load_model(tmp_path)
    assert not model.training and model.modelport_arch == family and model.modelport_assumed == []
    assert_same_logits(model, hf_model)


def test_bare_weights_with_arch_and_config(tmp_path):
    hf_model = tiny.llama(seed=22, tie_word_embeddings=True)
    state = tiny.hf_state_dict(hf_model)
    del state["lm_head.weight"]
    path = save_bare(state, tmp_path / "w.safetensors")
    model = modelport.load_model(path, arch="llama", config=hf_model.config.to_dict())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_logits(model, hf_model)


def test_bare_weights_need_a_config_or_an_explicit_assume_config(tmp_path):
    hf_model = tiny.gpt2(seed=23)
    state = tiny.hf_state_dict(hf_model)
    del state["lm_head.weight"]
    path = save_bare(state, tmp_path / "w.safetensors")
    with pytest.raises(ConfigNeededError, match=r"n_head \(would guess 1\).*config='config.json'.*assume_config=True"):
        modelport.load_model(path)
    model = modelport.load_model(path, assume_config=True)
    assert "n_head" in model.modelport_assumed
    assert model(*example_inputs(model)).shape == (1, 8, tiny.VOCAB)


def test_base_model_names_and_derived_buffers_load(tmp_path):
    hf_model = tiny.gpt2(seed=24)
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 20, 20).tril()          # causal mask kept by old checkpoints
    path = save_bare(state, tmp_path / "w.safetensors")
    model = modelport.load_model(path, config=hf_model.config.to_dict())
    assert_same_logits(model, hf_model)


def test_neox_lm_head_spelling_of_transformers5(tmp_path):
    hf_model = tiny.gptneox(seed=25)
    path = save_bare(dict(hf_model.state_dict()), tmp_path / "w.safetensors")   # lm_head.weight, not embed_out
    model = modelport.load_model(path, config=hf_model.config.to_dict())
    assert_same_logits(model, hf_model)


def test_unexpected_and_missing_tensors_are_listed(tmp_path):
    hf_model = tiny.llama(seed=26)
    state = tiny.hf_state_dict(hf_model)
    state["model.extra.weight"] = torch.zeros(3)
    del state["model.layers.1.mlp.up_proj.weight"]
    path = save_bare(state, tmp_path / "w.safetensors")
    with pytest.raises(LayoutError, match=r"missing 1: model.layers.1.mlp.up_proj.weight; unexpected 1: model.extra.weight"):
        modelport.load_model(path, config=hf_model.config.to_dict())


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    hf_model = tiny.llama(seed=27)
    cfg = {**hf_model.config.to_dict(), "intermediate_size": 48}
    path = save_bare(tiny.hf_state_dict(hf_model), tmp_path / "w.safetensors")
    with pytest.raises(LayoutError, match=r"intermediate_size = 48 contradicts the weights, which imply intermediate_size = 40 "
                                          r"\(tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[40, 24\]\)"):
        modelport.load_model(path, config=cfg)


def test_tied_config_with_different_lm_head_is_refused(tmp_path):
    hf_model = tiny.llama(seed=28)                  # untied: lm_head differs from the embedding
    cfg = {**hf_model.config.to_dict(), "tie_word_embeddings": True}
    path = save_bare(tiny.hf_state_dict(hf_model), tmp_path / "w.safetensors")
    with pytest.raises(LayoutError, match="ties lm_head.weight"):
        modelport.load_model(path, config=cfg)


def test_arch_override_and_unknown_arch(tmp_path):
    hf_model = tiny.gpt2(seed=29)
    hf_model.save_pretrained(tmp_path)
    with pytest.raises(LayoutError, match="--arch llama contradicts"):
        modelport.load_model(tmp_path, arch="llama", config={**hf_model.config.to_dict()})
    with pytest.raises(UnsupportedError, match="unknown architecture 'bert'; known: gpt2, llama, gptneox"):
        modelport.load_model(tmp_path, arch="bert")


def test_dtype_casts_weights_and_keeps_rotary_in_float32(tmp_path):
    hf_model = tiny.llama(seed=30)
    hf_model.save_pretrained(tmp_path)
    model = modelport.load_model(tmp_path, dtype="bfloat16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary.inv_freq.dtype == torch.float32
    ids, mask = tiny.batch(seed=8)
    with torch.no_grad():
        got = model(ids, mask).float()
    want = tiny.hf_logits(hf_model, ids, mask)
    hf_bf16 = tiny.hf_logits(hf_model.to(torch.bfloat16), ids, mask).float()
    real = mask.bool()
    ours_err = (got - want)[real].abs().max().item()
    hf_err = (hf_bf16 - want)[real].abs().max().item()
    assert ours_err <= 2 * hf_err                 # bfloat16 rounding as transformers has it, not a wrong model


def test_loaded_model_scripts(tmp_path):
    hf_model = tiny.gptneox(seed=31, tie_word_embeddings=True)
    hf_model.save_pretrained(tmp_path)
    model = modelport.load_model(tmp_path)
    scripted = torch.jit.script(model)
    ids, mask = tiny.batch(seed=8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(ids, mask), model(ids, mask), rtol=0, atol=1e-6)
    assert model.embed_out.weight is model.gpt_neox.embed_in.weight
