"""Tiny transformers models of each family, filled deterministically from a local generator.

Sizes are pairwise distinct (dim 24, heads 4, kv heads 2, ffn 40, vocab 37, 3 layers) so a
transposed or mis-split weight fails as a shape error, and GQA is always exercised.
"""

from __future__ import annotations

import torch

VOCAB = 37


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from a local generator; norm weights near 1 so activations stay sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or ".ln_" in name or name.endswith(("ln_f.weight",)):
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model.eval()


def llama(seed: int = 0, **overrides):
    import transformers

    kw = dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40, vocab_size=VOCAB,
              num_hidden_layers=3, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
              tie_word_embeddings=False)
    kw.update(overrides)
    cfg = transformers.LlamaConfig(**kw)
    cfg._attn_implementation = "eager"
    return randomize(transformers.LlamaForCausalLM(cfg), seed)


def gptneox(seed: int = 0, **overrides):
    import transformers

    # head_dim 8 so that rotary_pct 0.5 gives an even number (4) of rotary dims
    kw = dict(hidden_size=32, num_attention_heads=4, intermediate_size=44, vocab_size=VOCAB, num_hidden_layers=3,
              max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=1000, use_parallel_residual=True,
              tie_word_embeddings=False)
    kw.update(overrides)
    cfg = transformers.GPTNeoXConfig(**kw)
    cfg._attn_implementation = "eager"
    return randomize(transformers.GPTNeoXForCausalLM(cfg), seed)


def gpt2(seed: int = 0, **overrides):
    import transformers

    kw = dict(n_embd=24, n_head=4, n_inner=40, vocab_size=VOCAB, n_layer=3, n_positions=20,
              bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    cfg = transformers.GPT2Config(**kw)
    cfg._attn_implementation = "eager"
    return randomize(transformers.GPT2LMHeadModel(cfg), seed)


def qwen2(seed: int = 0, **overrides):
    import transformers

    kw = dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40, vocab_size=VOCAB,
              num_hidden_layers=3, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
              tie_word_embeddings=False, use_sliding_window=False, sliding_window=16, max_window_layers=2)
    kw.update(overrides)
    cfg = transformers.Qwen2Config(**kw)
    cfg._attn_implementation = "eager"
    return randomize(transformers.Qwen2ForCausalLM(cfg), seed)


# One transformers builder per registered family: the tests parametrized over families() cover a new
# family once it is registered and has its builder here (build() fails, naming it, until then).
BUILDERS = {"gpt2": gpt2, "llama": llama, "gptneox": gptneox, "qwen2": qwen2}


def families() -> list[str]:
    """Every family in modelport's registry, in its order."""
    from modelport.models.families import ids

    return ids()


def build(family: str, seed: int = 0, **overrides):
    """The tiny transformers model of a registered family."""
    if family not in BUILDERS:
        import pytest

        pytest.fail(f"family {family!r} is registered but has no builder in tests/models/tiny.py BUILDERS; add one")
    return BUILDERS[family](seed, **overrides)


def batch(seed: int = 1, b: int = 3, t: int = 9):
    """Token ids and a left-padded mask: row 0 full, row 1 padded by 4, row 2 by 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :min(4, t - 1)] = 0
    if b > 2:
        mask[2, :1] = 0
    return ids, mask


def hf_logits(model, ids, mask):
    """transformers' logits with the positions generate() would use for this mask."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def hf_state_dict(model) -> dict:
    """The model's tensors under the names published checkpoints use (NeoX: embed_out, not lm_head)."""
    sd = dict(model.state_dict())
    if model.config.model_type == "gpt_neox" and "lm_head.weight" in sd:
        sd["embed_out.weight"] = sd.pop("lm_head.weight")
    return sd


def ours_from_hf(hf_model):
    """Our reference model built from the transformers model's config, its weights loaded strictly."""
    from modelport.models.config import config_from_hf
    from modelport.models.loader import build_model

    cfg = config_from_hf(hf_model.config.to_dict())
    model = build_model(cfg, device="cpu")
    model.load_state_dict(hf_state_dict(hf_model), strict=True)
    return model.eval()


def assert_parity(hf_model, tol: float = 1e-5):
    """Logits equal transformers' at every real token of a left-padded batch, and padding changes nothing."""
    ours = ours_from_hf(hf_model)
    ids, mask = batch()
    ref = hf_logits(hf_model, ids, mask)
    with torch.no_grad():
        out = ours(ids, mask)
        unpadded = ours(ids[1:2, 4:])                 # row 1 without its 4 pads
        full = ours(ids[0:1])                          # row 0 has no pads: mask or no mask, same logits
    real = mask.bool()
    assert out.shape == ref.shape == (3, 9, VOCAB)
    diff = (out - ref)[real].abs().max().item()
    assert diff <= tol, f"max |ours - transformers| = {diff}"
    assert (out[1, 4:] - unpadded[0]).abs().max().item() <= tol
    assert (out[0] - full[0]).abs().max().item() <= tol
    return ours
