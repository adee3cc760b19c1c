"""The reference runs first and is released before any candidate loads; what it leaves behind (outputs, the
float64 run, lower precisions, per-block outputs) judges the candidates as the live model did; precision
changes cast one module at a time and give what a whole-model cast gives."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import modelport.models.runnable as runnable_mod
from modelport.models.runnable import CAUSAL_LM, from_module, load_runnable
from modelport.parity import parity
from modelport.parity.calibrate import run_at
from modelport.parity.reference import streamed

from . import faults
from ..models import tiny


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    state, config = faults.llama_state(seed=61)
    root = tmp_path_factory.mktemp("ref")
    ref = faults.write_dir(root / "ref", state, config)
    bad = faults.write_dir(root / "bad", faults.scaled(state, "model.layers.2.self_attn.o_proj.weight", 1.01), config)
    return ref, bad


def _tracking(monkeypatch):
    """Weak references to every model load_runnable builds, in load order."""
    made = []
    real = runnable_mod.load_runnable

    def load(*args, **kw):
        r = real(*args, **kw)
        made.append(weakref.ref(r.module))
        return r

    monkeypatch.setattr(runnable_mod, "load_runnable", load)
    return made


def test_the_reference_is_released_before_a_candidate_loads(llama, monkeypatch):
    ref, bad = llama
    made = _tracking(monkeypatch)
    alive_at_candidate = []

    def progress(line):
        if line.endswith(("loading " + str(ref), "loading " + str(bad))) and line.startswith("candidate"):
            gc.collect()
            alive_at_candidate.append([w() is not None for w in made])

    report = parity(ref, ref, bad, seq_lens=(1, 6), new_tokens=3, progress=progress)
    assert [c.passed for c in report.candidates] == [True, False]
    # at each candidate's load: the reference and every earlier candidate are gone
    assert alive_at_candidate == [[False], [False, False]]
    div = report.candidates[1].first_divergence          # located on what the reference recorded
    assert (div.layer, div.block) == (2, "model.layers.2")
    gc.collect()
    assert all(w() is None for w in made)                # the report holds no model


def test_parity_keeps_what_lives_out_of_full_collections_and_restores_the_collector(llama):
    """Objects that lived before parity, and what outlives the reference's release, are frozen while it runs (a
    full collection then walks only what parity made since); the collector is as it was afterwards."""
    ref, _ = llama
    assert gc.get_freeze_count() == 0
    frozen = {}

    def progress(line):
        frozen.setdefault(line.split(":")[0] + (" released" if "released" in line else ""), gc.get_freeze_count())

    assert parity(ref, ref, seq_lens=(3,), new_tokens=1, progress=progress)
    assert 0 < frozen["reference"] < frozen["reference released"]
    assert gc.get_freeze_count() == 0


def test_progress_says_the_reference_is_released_before_candidates(llama):
    ref, _ = llama
    lines = []
    assert parity(ref, ref, seq_lens=(3,), new_tokens=1, progress=lines.append)
    released = lines.index("reference: released (its outputs are kept)")
    assert lines[0].startswith("reference: loading")
    assert any("float64" in line for line in lines[:released])
    assert lines[released + 1].startswith("candidate 1/1: loading") and lines[-1] == "candidate 1/1: pass"


def test_a_precision_no_candidate_was_expected_at_loads_the_reference_again(llama, monkeypatch):
    import sys

    parity_mod = sys.modules["modelport.parity"]     # the package (modelport.parity the attribute is the function)
    ref, _ = llama
    want = parity(ref, ref, dtype="fp16", seq_lens=(1, 5), new_tokens=2)
    monkeypatch.setattr(parity_mod, "candidate_precisions", lambda cands, dtype: [])
    lines = []
    got = parity(ref, ref, dtype="fp16", seq_lens=(1, 5), new_tokens=2, progress=lines.append)
    assert any(line.startswith("reference: loading again (to run it in float16") for line in lines)
    assert want and got
    assert got.candidates[0].tolerance == want.candidates[0].tolerance     # the same floor either way


def test_a_caller_s_reference_stays_alive_and_is_not_reloaded(llama):
    ref, _ = llama
    r = load_runnable(ref)
    lines = []
    assert parity(r, ref, dtype="fp16", seq_lens=(4,), new_tokens=1, progress=lines.append)
    assert not any("released" in line or "loading again" in line for line in lines)
    assert next(r.module.parameters()).dtype == torch.float32         # put back as it was


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_streamed_precision_equals_a_whole_model_cast(dtype):
    hf = tiny.llama(seed=62)

    class HF(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return tiny.hf_logits(self.m, ids, mask)

    ids, mask = tiny.batch(seed=8, t=6)
    ids, mask = ids[:1], mask[:1]                         # no padding: the whole-model cast's float64 runs it too
    feeds = {"input_ids": ids, "attention_mask": mask}
    for model in (HF(hf), tiny.ours_from_hf(hf)):
        r = from_module(model, kind=CAUSAL_LM, origin="tiny", vocab_size=tiny.VOCAB)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        (whole,) = run_at(r, [feeds], dtype)
        with streamed(r, dtype) as rr:
            got = rr.run(feeds)["logits"]
        assert got.dtype == getattr(torch, dtype)
        if dtype == "float64" or isinstance(model, HF):
            assert torch.equal(got, whole["logits"]), type(model)
        else:   # modelport keeps rotary frequencies in float32 at every precision; a whole cast rounds them
            assert (got.float() - whole["logits"].float()).abs().max() < 0.1
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


@pytest.mark.parametrize("counted", [True, False])
def test_streamed_copies_survive_outputs_that_view_a_weight_and_modules_inside_modules(counted, monkeypatch):
    """The cast copies come from one buffer reused module after module: a module whose output is a view of its
    own weight, and a module with weights of its own running inside another, still get exactly a whole cast."""

    class Queries(torch.nn.Module):               # its output is its weight, viewed
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Parameter(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)))

        def forward(self, x):
            return self.q.expand(x.shape[0], -1, -1)

    class Mixer(torch.nn.Module):                 # weights of its own, and a child with weights, run inside it
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.randn(8, generator=torch.Generator().manual_seed(2)))
            self.inner = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.inner(x * self.scale) * self.scale

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.queries, self.mix, self.head = Queries(), Mixer(), torch.nn.Linear(8, 8)

        def forward(self, x):
            q = self.queries(x)
            h = self.mix(x).unsqueeze(1) + q          # q is used after other modules took copies of their own
            return self.head(h)

    if not counted:          # a torch that cannot count a storage's references: no buffer is reused
        monkeypatch.delattr(torch._C, "_storage_Use_Count")
    model = Model().eval()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    from modelport.models.runnable import tensor_input

    r = from_module(model, kind="tensor", origin="tiny", input_spec=tensor_input("2,8"))
    (whole,) = run_at(r, [{r.inputs[0].name: x}], "float64")
    with streamed(r, "float64") as rr:
        got = rr.run({r.inputs[0].name: x.double()})
    name = next(iter(got))
    assert got[name].dtype == torch.float64 and torch.equal(got[name], whole[name])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_float16_reference_in_transformers_calibrates(tmp_path):
    """transformers keeps a float16 model's rotary frequencies in float32: the model is still float16 throughout,
    so it is run in float64 (one module at a time) for the floor, as a 13.5 GB float16 7B reference would be."""
    hf = tiny.llama(seed=63).half()
    hf.save_pretrained(tmp_path / "ref")
    from safetensors.torch import save_file

    save_file(tiny.hf_state_dict(hf), tmp_path / "bare.safetensors", metadata={"format": "pt"})
    report = parity(tmp_path / "ref", tmp_path / "bare.safetensors", seq_lens=(1, 6), new_tokens=2)
    tol = report.candidates[0].tolerance
    assert report.reference["origin"] == "transformers LlamaForCausalLM"
    assert tol.calibrated and tol.dtype == "float16" and tol.floor > 0, tol
    assert report, report.to_text()


def test_the_big_pair_builder_streams_a_float16_pair_that_passes(tmp_path):
    """benchmarks/bench_parity_big.py at its tiny shape: the streamed safetensors file reads back, the pair passes."""
    import importlib.util
    from pathlib import Path

    from safetensors import safe_open

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_parity_big.py"
    spec = importlib.util.spec_from_file_location("bench_parity_big", path)
    big = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(big)
    ref, cand = big.build_pair(tmp_path / "pair", "tiny", seed=3)
    with safe_open(str(cand), "pt") as f:
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
        assert f.get_tensor("model.norm.weight").dtype == torch.float16
    assert shapes == dict(big.tensors(big.SHAPES["tiny"]))
    report = parity(ref, cand, seq_lens=(1, 5), new_tokens=2)
    tol = report.candidates[0].tolerance
    assert report and tol.calibrated and tol.dtype == "float16", report.to_text()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_float64_rows_equal_each_row_on_its_own(family):
    """The float64 run packs the rows of every input set, right-padded, into few forwards: each row's outputs
    equal that row run alone on its real tokens; padded positions are NaN."""
    from modelport.parity.reference import packed

    hf = tiny.llama(seed=63) if family == "llama" else tiny.gpt2(seed=63, n_positions=40)
    r = from_module(tiny.ours_from_hf(hf).double(), kind=CAUSAL_LM, origin="tiny", vocab_size=tiny.VOCAB)
    sets = []
    for seed, t in ((12, 1), (13, 5), (14, 9)):
        ids, mask = tiny.batch(seed=seed, t=t)
        sets.append({"input_ids": ids, "attention_mask": mask})
    sets.append({"input_ids": sets[2]["input_ids"], "attention_mask": torch.ones_like(sets[2]["attention_mask"])})
    got = packed(r, sets)
    for feeds, out in zip(sets, got):
        mask = feeds["attention_mask"]
        assert out["logits"].shape == (*mask.shape, tiny.VOCAB)
        for row in range(mask.shape[0]):
            keep = mask[row].bool()
            if not keep.any():                            # a row without a token has no outputs of its own
                assert bool(out["logits"][row].isnan().all())
                continue
            alone = r.run({k: v[row:row + 1, keep] for k, v in feeds.items()})["logits"][0]
            assert (out["logits"][row, keep] - alone).abs().max() < 1e-12
            assert bool(out["logits"][row, ~keep].isnan().all())
