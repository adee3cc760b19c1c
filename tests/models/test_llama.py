"""Llama reference model against transformers' LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from modelport.models._common import rope_inv_freq
from modelport.models.config import RopeScaling

from . import tiny

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True},
    {"rope_scaling": LLAMA3},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True},
    {"num_key_value_heads": 1, "head_dim": 10},
], ids=["untied", "tied", "llama3-rope", "linear-rope", "mha-biases", "mqa-head_dim"])
def test_logits_equal_transformers(overrides):
    tiny.assert_parity(tiny.llama(seed=3, **overrides))


def test_llama3_scaling_covers_all_three_bands():
    # head_dim 6, theta 500: wavelengths 6.3 (kept), 49.8 (blended), 395 (divided by factor)
    plain = rope_inv_freq(6, 500.0)
    scaled = rope_inv_freq(6, 500.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 64))
    assert scaled[0] == plain[0]
    assert plain[1] / 8 < scaled[1] < plain[1]
    assert torch.allclose(scaled[2], plain[2] / 8)


def test_tied_model_shares_one_parameter():
    ours = tiny.ours_from_hf(tiny.llama(tie_word_embeddings=True))
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    untied = tiny.ours_from_hf(tiny.llama())
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
