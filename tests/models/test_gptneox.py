"""GPT-NeoX reference model against transformers' GPTNeoXForCausalLM."""

from __future__ import annotations

import pytest

from . import tiny


@pytest.mark.parametrize("overrides", [
    {"use_parallel_residual": True},
    {"use_parallel_residual": False},
    {"rotary_pct": 1.0, "tie_word_embeddings": True},      # OpenCALM rotates the whole head
    {"rotary_pct": 0.25, "hidden_act": "gelu_new", "attention_bias": False},
], ids=["parallel", "sequential", "full-rotary-tied", "quarter-rotary"])
def test_logits_equal_transformers(overrides):
    tiny.assert_parity(tiny.gptneox(seed=5, **overrides))


def test_partial_rotary_leaves_the_rest_of_each_head():
    ours = tiny.ours_from_hf(tiny.gptneox(rotary_pct=0.5))
    assert ours.gpt_neox.layers[0].attention.rotary_dims == 4
    assert ours.gpt_neox.rotary.inv_freq.shape == (2,)
