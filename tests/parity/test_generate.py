"""Greedy generation through each side's key/value cache equals re-running the whole sequence: modelport's
Llama (GQA, Qwen2 biases), GPT-2 and GPT-NeoX (partial rotary, both residual orders), transformers, and
ONNX graphs built with past_key_values; graphs without a cache re-run the prefix."""

from __future__ import annotations

import pytest
import torch

from modelport.models.runnable import CAUSAL_LM, from_module
from modelport.parity.generate import greedy, stepper

from ..models import tiny

FAMILIES = {
    "llama-gqa": lambda: tiny.llama(seed=51),
    "llama-tied-biases": lambda: tiny.llama(seed=52, tie_word_embeddings=True, attention_bias=True),
    "gpt2": lambda: tiny.gpt2(seed=53, n_positions=40),
    "gptneox-parallel": lambda: tiny.gptneox(seed=54),
    "gptneox-sequential": lambda: tiny.gptneox(seed=55, use_parallel_residual=False),
}


def _ours(hf):
    return from_module(tiny.ours_from_hf(hf), kind=CAUSAL_LM, origin="modelport reference", vocab_size=tiny.VOCAB)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_greedy_equals_uncached_on_a_left_padded_batch(name):
    ours = _ours(FAMILIES[name]())
    assert stepper(ours) is not None                       # the family model has an incremental path
    ids, mask = tiny.batch(seed=3, t=7)                    # rows left-padded by 0, 4 and 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    cached, cached_steps = greedy(ours, feeds, 9)
    plain, plain_steps = greedy(ours, feeds, 9, cache=False)
    assert torch.equal(cached, plain)
    for a, b in zip(cached_steps, plain_steps):            # the same logits, up to float32 summation order
        assert (a - b).abs().max() < 1e-5


def test_the_cache_matches_transformers_greedy():
    hf = FAMILIES["llama-gqa"]()
    ids, mask = tiny.batch(seed=4, t=6)
    want = []
    x, m = ids, mask
    for _ in range(6):
        nxt = tiny.hf_logits(hf, x, m)[:, -1].argmax(-1, keepdim=True)
        want.append(nxt)
        x, m = torch.cat([x, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    got, _ = greedy(_ours(hf), {"input_ids": ids, "attention_mask": mask}, 6)
    assert torch.equal(got, torch.cat(want, 1))


def test_a_step_runs_only_the_tokens_after_the_cache():
    model = tiny.ours_from_hf(FAMILIES["llama-gqa"]())
    ids, mask = tiny.batch(seed=5, t=5)
    with torch.no_grad():
        _, past = model.step(ids, mask)
        assert [tuple(k.shape) for k, _ in past] == [(3, 2, 5, 6)] * 3     # (B, kv heads, S, head_dim) per layer
        nxt = torch.zeros(3, 1, dtype=torch.long)
        logits, past = model.step(torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1), past)
        full = model(torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1))[:, -1]
    assert past[0][0].shape[2] == 6 and (logits - full).abs().max() < 1e-5


def test_onnx_graph_with_past_key_values_feeds_present_back(tmp_path):
    pytest.importorskip("onnxruntime")
    from modelport.convert.export import ExportOptions
    from modelport.convert.onnx_builder import build_onnx
    from modelport.models.graph import onnx_runnable

    hf = FAMILIES["gptneox-parallel"]()
    hf.save_pretrained(tmp_path / "hf")
    ids, mask = tiny.batch(seed=6, t=6)
    feeds = {"input_ids": ids, "attention_mask": mask}
    want, _ = greedy(_ours(hf), feeds, 7, cache=False)
    for kv in (True, False):
        dst = tmp_path / f"kv{kv}" / "model.onnx"
        build_onnx(tmp_path / "hf", dst, options=ExportOptions(kv_cache=kv))
        r = onnx_runnable(dst)
        assert (stepper(r) is not None) == kv                # a graph without a cache re-runs the prefix
        got, steps = greedy(r, feeds, 7)
        assert torch.equal(got, want), kv
        if kv:
            plain, plain_steps = greedy(r, feeds, 7, cache=False)
            assert torch.equal(plain, got)
            assert max(float((a - b).abs().max()) for a, b in zip(steps, plain_steps)) < 1e-4


def test_transformers_side_uses_its_cache(tmp_path):
    from modelport.models.hf_auto import transformers_runnable

    hf = FAMILIES["gpt2"]()
    hf.save_pretrained(tmp_path / "hf")
    r = transformers_runnable(tmp_path / "hf")
    assert stepper(r) is not None
    ids, mask = tiny.batch(seed=7, t=6)
    feeds = {"input_ids": ids, "attention_mask": mask}
    assert torch.equal(greedy(r, feeds, 6)[0], greedy(r, feeds, 6, cache=False)[0])
