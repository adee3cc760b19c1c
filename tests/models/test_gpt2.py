"""GPT-2 reference model against transformers' GPT2LMHeadModel."""

from __future__ import annotations

import pytest

from . import tiny


@pytest.mark.parametrize("overrides", [
    {},
    {"scale_attn_by_inverse_layer_idx": True, "activation_function": "gelu"},
    {"tie_word_embeddings": False, "n_inner": None},
], ids=["tied", "inverse-layer-scale", "untied-default-ffn"])
def test_logits_equal_transformers(overrides):
    tiny.assert_parity(tiny.gpt2(seed=7, **overrides))


def test_conv1d_weights_are_in_out():
    ours = tiny.ours_from_hf(tiny.gpt2())
    assert tuple(ours.transformer.h[0].attn.c_attn.weight.shape) == (24, 72)
    assert tuple(ours.transformer.h[0].mlp.c_fc.weight.shape) == (24, 40)
    assert ours.lm_head.weight is ours.transformer.wte.weight
