"""Calibrated tolerances on tiny models: honest copies, casts and exports pass; each planted fault fails
with exit 1 and is named at its layer; bare candidates borrow the reference's config."""

from __future__ import annotations

import json

import pytest
import torch

from modelport.parity import parity
from modelport.parity.calibrate import floors, run_at

from . import faults


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    state, config = faults.llama_state(seed=41)
    root = tmp_path_factory.mktemp("cal")
    return root, state, config, faults.write_dir(root / "ref", state, config)


def _cli_json(cli, *args):
    res = cli("parity", *map(str, args), "--seq-len", "1,6", "--new-tokens", "3", "--json")
    return res, json.loads(res.stdout) if res.stdout.strip().startswith("{") else None


def test_float64_run_of_a_padded_batch_matches_its_rows(llama):
    from modelport.models.runnable import example_feeds, load_runnable

    ref = load_runnable(llama[3])
    feeds = example_feeds(ref, batch=2, seq_len=6, seed=0, left_pad=3)
    (lo,), (hi,) = run_at(ref, [feeds], "float32"), run_at(ref, [feeds], "float64")
    assert hi["logits"].dtype == torch.float64 and next(ref.module.parameters()).dtype == torch.float32
    fl = floors([hi], [lo], [feeds["attention_mask"]], "float32", 10.0)["logits"]
    assert 0 < fl.floor < 1e-4 and fl.allowed >= 10 * fl.floor       # float32 rounding, measured, not zero
    assert torch.isfinite(hi["logits"][1, 3:]).all() and torch.isnan(hi["logits"][1, :3]).all()


FAULTS = {   # name: (build(state, config) -> (state, config), layer, named module)
    "gate and up swapped": (lambda s, c: (faults.gate_up_swapped(s, 1), c), 1, "model.layers.1.mlp"),
    "square projection transposed": (lambda s, c: (faults.square_transposed(s, 2), c), 2, "model.layers.2.self_attn"),
    "one q head in Meta rotary order": (lambda s, c: (faults.one_head_meta_order(s, 1), c), 1,
                                        "model.layers.1.self_attn"),
    "two kv heads swapped": (lambda s, c: (faults.kv_heads_swapped(s, 2), c), 2, "model.layers.2.self_attn"),
    "late norm replaced by ones": (lambda s, c: (faults.norm_ones(s, 2), c), 2, "model.layers.2.post_attention_layernorm"),
    "rope theta changed": (lambda s, c: (s, {**c, "rope_theta": c.get("rope_theta", 500.0) * 2,
                                             "rope_parameters": {**(c.get("rope_parameters") or {}),
                                                                 "rope_theta": 1000.0}}), 0,
                           "model.layers.0.self_attn"),
    "weight scaled by 1.001": (lambda s, c: (faults.scaled(s, "model.layers.1.mlp.down_proj.weight"), c), 1,
                               "model.layers.1.mlp"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_fails_with_exit_1_at_its_layer(cli, llama, fault):
    root, state, config, ref = llama
    build, layer, name = FAULTS[fault]
    bad_state, bad_config = build(state, config)
    cand = faults.write_dir(root / fault.replace(" ", "-"), bad_state, bad_config)
    res, data = _cli_json(cli, ref, cand)
    assert res.returncode == 1, res.stderr
    div = data["candidates"][0]["first_divergence"]
    assert (div["layer"], div["name"]) == (layer, name), div


def test_honest_copy_blames_no_layer_and_reports_its_margin(cli, llama):
    root, state, config, ref = llama
    res, data = _cli_json(cli, ref, faults.write_dir(root / "copy", state, config))
    assert res.returncode == 0, res.stdout
    cand = data["candidates"][0]
    assert cand["first_divergence"] is None and cand["tolerance"]["calibrated"]
    assert all(o["max_abs"] <= o["allowed"] for o in cand["outputs"])


def test_fp16_cast_compared_with_the_reference_at_its_own_precision(llama):
    root, state, config, ref = llama
    half = faults.write_dir(root / "half", {k: v.half() for k, v in state.items()}, {**config, "torch_dtype": "float16"})
    report = parity(ref, half, seq_lens=(1, 6), new_tokens=3)
    cand = report.to_json()["candidates"][0]
    assert report, report.to_text()
    assert cand["tolerance"]["dtype"] == "float16" and cand["tolerance"]["calibrated"]
    assert {o["cand_dtype"] for o in cand["outputs"]} == {"float16"} and cand["outputs"][0]["max_abs"] > 0
    assert report.to_json()["reference"]["origin"] == "transformers LlamaForCausalLM"
    # a fault a float16 cast keeps (a norm replaced by ones) still fails
    broken = faults.write_dir(root / "half-broken", {k: v.half() for k, v in faults.norm_ones(state, 2).items()}, config)
    assert not parity(ref, broken, seq_lens=(1, 6), new_tokens=3, locate=False)


def test_bare_candidate_borrows_the_reference_config_and_says_so(cli, llama, tmp_path):
    from safetensors.torch import save_file

    _, state, _, ref = llama
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    res = cli("parity", str(ref), str(tmp_path / "model.safetensors"), "--seq-len", "4", "--new-tokens", "2")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "config: " + str(ref / "config.json") + " (the reference's, borrowed" in res.stdout
    assert "reference: transformers LlamaForCausalLM" in res.stdout and "modelport reference llama" in res.stdout


def test_config_does_not_change_who_runs_the_reference(cli, llama):
    root, state, config, ref = llama
    res = cli("parity", str(ref), str(ref / "model.safetensors"), "--config", str(ref / "config.json"),
              "--seq-len", "4", "--new-tokens", "0")
    assert res.returncode == 0, res.stderr
    assert "reference: transformers LlamaForCausalLM" in res.stdout


def test_zeroed_embedding_rows_fail_through_every_id_in_each_format(cli, llama):
    """Two rows out of 37 zeroed (head untied): the seeded inputs may never feed them; the every-id pass does,
    for the safetensors directory, its ONNX export and its TorchScript file."""
    root, state, config, ref = llama
    bad = faults.write_dir(root / "rows", faults.embedding_rows_zeroed(state, [5, 30]), config)
    onnx_file, script = root / "rows.onnx", root / "rows.ts"
    assert cli("convert", bad, onnx_file, "--no-manifest").returncode == 0
    assert cli("convert", bad, script, "--to", "torchscript", "--no-manifest").returncode == 0
    for cand in (bad, onnx_file, script):
        res = cli("parity", str(ref), str(cand), "--seq-len", "1", "--batch", "1", "--new-tokens", "0", "--json")
        assert res.returncode == 1, (cand, res.stderr)
        cov = json.loads(res.stdout)["candidates"][0]["coverage"]
        assert cov["module"] == "model.embed_tokens" and cov["first_ids"] == [5, 30] and not cov["passed"], cov
    ok = cli("parity", str(ref), str(ref), "--seq-len", "1", "--new-tokens", "0", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["candidates"][0]["coverage"]["passed"]


def test_progress_names_each_stage_and_candidate(llama):
    _, _, _, ref = llama
    lines = []
    assert parity(ref, ref, ref, seq_lens=(3,), new_tokens=1, progress=lines.append)
    assert lines[0].startswith("reference: loading") and any("float64" in line for line in lines)
    assert [line for line in lines if line.endswith(": pass")] == ["candidate 1/2: pass", "candidate 2/2: pass"]
