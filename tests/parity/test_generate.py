"""Greedy generation through each side's key/value cache equals re-running the whole sequence: modelport's
Llama (GQA, Qwen2 biases), GPT-2 and GPT-NeoX (partial rotary, both residual orders), transformers, and
ONNX graphs built with past_key_values; graphs without a cache re-run the prefix."""

from __future__ import annotations

import pytest
import torch

from modelport.models.runnable import CAUSAL_LM, from_module
from modelport.parity.generate import follow, greedy, stepper

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


def _faulty(hf, scale=1.5):
    """modelport's model of ``hf`` with one projection scaled: its own greedy output differs from ``hf``'s."""
    model = tiny.ours_from_hf(hf)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "o_proj" in n or "c_proj" in n or "dense" in n).mul_(scale)
    return from_module(model, kind=CAUSAL_LM, origin="faulty", vocab_size=tiny.VOCAB)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "gptneox-parallel"])
def test_follow_gives_the_candidates_own_greedy_output(name, cache):
    """Fed the reference's tokens, an honest candidate's choices are those tokens; a faulty one's differ, and then
    it generates on its own: either way ``follow`` returns exactly what ``greedy`` would."""
    hf = FAMILIES[name]()
    ids, mask = tiny.batch(seed=8, t=6)
    feeds = {"input_ids": ids, "attention_mask": mask}
    ref_tokens, ref_steps = greedy(_ours(hf), feeds, 8)
    honest, steps = follow(_ours(hf), feeds, ref_tokens, cache=cache)
    assert torch.equal(honest, ref_tokens) and len(steps) == 8
    assert max(float((a - b).abs().max()) for a, b in zip(steps, ref_steps)) < 1e-4
    bad = _faulty(hf)
    own, _ = greedy(bad, feeds, 8, cache=cache)
    assert not torch.equal(own, ref_tokens)                 # the fault shows in the tokens
    assert torch.equal(follow(bad, feeds, ref_tokens, cache=cache)[0], own)


def test_follow_runs_two_forwards_through_the_cache():
    """The prompt, then every generated token but the last in one piece after the cache; not a step per token."""
    hf = FAMILIES["llama-gqa"]()
    model = tiny.ours_from_hf(hf)
    calls = []
    real = model.step
    model.step = lambda ids, mask, past=None, every=False: calls.append(ids.shape[1]) or real(ids, mask, past, every)
    r = from_module(model, kind=CAUSAL_LM, origin="ours", vocab_size=tiny.VOCAB)
    ids, mask = tiny.batch(seed=9, t=5)
    feeds = {"input_ids": ids, "attention_mask": mask}
    tokens, _ = greedy(_ours(hf), feeds, 6)
    assert torch.equal(follow(r, feeds, tokens)[0], tokens)
    assert calls == [5, 10]                                 # whole sequences: 5 prompt tokens, then 5 more


def test_follow_catches_a_cache_that_only_the_generated_tokens_use():
    """A candidate whose cached path is wrong but whose full forward is right: the prompt's logits agree, the
    generated tokens fed through its cache do not, and its own greedy output (through that cache) is returned."""
    hf = FAMILIES["llama-gqa"]()
    model = tiny.ours_from_hf(hf)
    real = model.step

    def broken(ids, mask, past=None, every=False):
        if past is not None:
            past = [(k * 0.5, v) for k, v in past]          # keys halved on the way back in
        return real(ids, mask, past, every)

    model.step = broken
    r = from_module(model, kind=CAUSAL_LM, origin="broken cache", vocab_size=tiny.VOCAB)
    ids, mask = tiny.batch(seed=10, t=6)
    feeds = {"input_ids": ids, "attention_mask": mask}
    tokens, _ = greedy(_ours(hf), feeds, 8)
    got, _ = follow(r, feeds, tokens)
    assert not torch.equal(got, tokens)
    assert torch.equal(got, greedy(r, feeds, 8)[0])


def test_follow_through_an_onnx_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    from modelport.convert.export import ExportOptions
    from modelport.convert.onnx_builder import build_onnx
    from modelport.models.graph import onnx_runnable

    hf = FAMILIES["llama-gqa"]()
    hf.save_pretrained(tmp_path / "hf")
    ids, mask = tiny.batch(seed=11, t=6)
    feeds = {"input_ids": ids, "attention_mask": mask}
    tokens, ref_steps = greedy(_ours(hf), feeds, 7)
    build_onnx(tmp_path / "hf", tmp_path / "m.onnx", options=ExportOptions(kv_cache=True))
    r = onnx_runnable(tmp_path / "m.onnx")
    got, steps = follow(r, feeds, tokens)
    assert torch.equal(got, tokens)
    assert max(float((a - b).abs().max()) for a, b in zip(steps, ref_steps)) < 1e-4


def test_rows_generated_apart_on_the_cpu_give_the_batchs_tokens(monkeypatch):
    """On the CPU each row generates in a thread of its own, torch's threads shared among them (matrix-vector
    steps); the tokens are the batch's, and torch's thread count is put back."""
    import threading

    from modelport.parity import generate

    ours = _ours(FAMILIES["llama-gqa"]())
    ids, mask = tiny.batch(seed=6, t=7)                     # three rows, left-padded differently
    feeds = {"input_ids": ids, "attention_mask": mask}
    seen = []
    real = generate._greedy

    def spy(r, f, *rest):
        seen.append((threading.current_thread().name, f["input_ids"].shape[0], torch.get_num_threads()))
        return real(r, f, *rest)

    monkeypatch.setattr(generate, "_greedy", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        apart, apart_steps = greedy(ours, feeds, 8)
        assert torch.get_num_threads() == 3
        seen_by_three = list(seen)
        seen.clear()
        torch.set_num_threads(6)
        greedy(ours, feeds, 2)
        assert torch.get_num_threads() == 6
    finally:
        torch.set_num_threads(before)
    assert sorted(rows for _, rows, _ in seen_by_three) == [1, 1, 1]
    assert all(name.startswith("modelport-greedy") and n == 1 for name, _, n in seen_by_three)
    assert sorted(n for *_, n in seen) == [2, 2, 2]            # six threads: two for each row
    batch, batch_steps = real(ours, feeds, 8, "logits", True)
    assert torch.equal(apart, batch)
    assert len(apart_steps) == len(batch_steps) == 8
    for a, b in zip(apart_steps, batch_steps):
        assert a.shape == b.shape == (3, tiny.VOCAB) and (a - b).abs().max() < 1e-5


def test_a_row_that_fails_apart_fails_the_generation(monkeypatch):
    from modelport.parity import generate

    ours = _ours(FAMILIES["llama-gqa"]())
    ids, mask = tiny.batch(seed=6, t=5)
    real = generate._greedy

    def second_fails(r, f, *rest):
        if torch.equal(f["input_ids"], ids[2:]):          # three rows on two threads: rows 0-1, row 2
            raise RuntimeError("row 2 broke")
        return real(r, f, *rest)

    monkeypatch.setattr(generate, "_greedy", second_fails)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="row 2 broke"):
            greedy(ours, {"input_ids": ids, "attention_mask": mask}, 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
