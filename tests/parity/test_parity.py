"""The parity check end to end: honest copies and exports pass, a 1% weight change fails, and the
report, JSON, JUnit and exit codes say so."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest
import torch

import modelport
from modelport.errors import UnsupportedError
from modelport.models.runnable import CAUSAL_LM, TorchRunnable, load_runnable, token_inputs
from modelport.parity import parity
from modelport.testing import ParityError, assert_parity

from . import faults


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    state, config = faults.llama_state(seed=31)
    root = tmp_path_factory.mktemp("llama")
    ref = faults.write_dir(root / "ref", state, config)
    copy = faults.write_dir(root / "copy", state, config)
    scaled = dict(state)
    scaled["model.layers.1.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"] * 1.01
    return root, ref, copy, faults.write_dir(root / "scaled", scaled, config)


def test_copy_passes_and_the_report_says_what_ran(llama):
    _, ref, copy, _ = llama
    report = modelport.parity(ref, copy, seq_lens=(1, 5, 12), new_tokens=4, seed=7)
    assert report and report.passed
    data = report.to_json()
    json.dumps(data)
    assert data["device"] == "auto" and data["torch_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert data["seed"] == 7 and [i["seq_len"] for i in data["inputs"]] == [1, 5, 12]
    assert data["inputs"][2]["shapes"]["input_ids"] == [2, 12] and data["inputs"][2]["left_pad"] == 6
    # a Hugging Face directory as the reference runs in transformers (the reference of truth); candidates as detected
    assert data["reference"]["origin"] == "transformers LlamaForCausalLM"
    cand = data["candidates"][0]
    assert "modelport reference llama" in cand["model"]["origin"]
    tol = cand["tolerance"]     # calibrated on the reference: 10 x its own float32 error against float64
    assert tol["calibrated"] and tol["factor"] == 10.0 and tol["dtype"] == "float32" and tol["rtol"] == 0.0
    assert 0 < tol["floor"] < 1e-4 and tol["atol"] == pytest.approx(max(10 * tol["floor"], tol["atol"]))
    assert {c["name"] for c in cand["checks"]} >= {"logits within tolerance", "finite", "top-1 agreement",
                                                   "greedy generation of 4 tokens"}
    assert cand["outputs"][1]["positions"] == (5 + 3) * faults.tiny.VOCAB      # padding excluded
    assert cand["first_divergence"] is None
    text = report.to_text()
    assert "calibrated: max abs error against the float64 reference up to" in text and "parity: PASS" in text
    assert "margin" in text


def test_weight_scaled_by_one_percent_fails(llama):
    _, ref, _, scaled = llama
    report = parity(ref, scaled, seq_lens=(5,), new_tokens=2)
    assert not report
    div = report.candidates[0].first_divergence
    assert (div.layer, div.name) == (1, "model.layers.1.mlp")
    with pytest.raises(ParityError, match="first divergence: layer 1"):
        assert_parity(ref, scaled, seq_lens=(5,), new_tokens=2)
    assert assert_parity(ref, ref, seq_lens=(5,), new_tokens=0)


def test_logit_moved_by_1e_3_fails(llama):
    _, ref, _, _ = llama
    base = load_runnable(ref)

    class Nudged(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            out = self.inner(ids, mask).clone()
            out[0, -1, 3] += 1e-3
            return out

    cand = TorchRunnable(kind=CAUSAL_LM, inputs=token_inputs(), outputs=("logits",), origin="nudged",
                         vocab_size=base.vocab_size, module=Nudged(base.module))
    report = parity(base, cand, seq_lens=(4,), new_tokens=0)
    assert not report
    worst = report.candidates[0].comparisons[0]
    assert worst.worst == [0, 3, 3] and abs(worst.max_abs - 1e-3) < 1e-5


def test_honest_onnx_and_torchscript_exports_pass(llama, tmp_path):
    pytest.importorskip("onnxruntime")
    _, ref, _, _ = llama
    ref_r = load_runnable(ref)
    onnx_r = faults.ort_runnable(ref_r.module, tmp_path / "m.onnx")
    script_r = faults.script_runnable(ref_r.module)
    report = parity(ref_r, onnx_r, script_r)        # default lengths 1, 8, 32 and 16 new tokens
    assert report, report.to_text()
    assert report.providers() == ["CPUExecutionProvider"]
    assert "onnxruntime providers that ran: CPUExecutionProvider" in report.to_text()
    for cand in report.candidates:
        assert cand.generation.first_difference is None and cand.generation.new_tokens == 16


def test_gpt2_export_passes_and_sequence_lengths_fit_its_position_table(tmp_path):
    pytest.importorskip("onnxruntime")
    state, config = faults.gpt2_state(seed=32)             # 20 positions
    ref = load_runnable(faults.write_dir(tmp_path / "ref", state, config))
    report = parity(ref, faults.ort_runnable(ref.module, tmp_path / "g.onnx"), new_tokens=6)
    assert report, report.to_text()
    assert [i["seq_len"] for i in report.inputs] == [1, 8, 14]     # 32 clipped to 20 - 6


def test_cli_exit_codes_json_report_and_junit(cli, llama, tmp_path):
    _, ref, copy, scaled = llama
    ok = cli("parity", ref, copy, "--seq-len", "1,6", "--new-tokens", "3")
    assert ok.returncode == 0, ok.stderr
    assert "parity: PASS" in ok.stdout and "calibrated: " in ok.stdout and "margin" in ok.stdout
    junit, rep = tmp_path / "parity.xml", tmp_path / "parity.json"
    bad = cli("parity", ref, copy, scaled, "--seq-len", "6", "--new-tokens", "3", "--json", "--junit", junit,
              "--report", rep, "--atol", "1e-4", "--rtol", "0")
    assert bad.returncode == 1
    assert "parity failed for" in bad.stderr and str(scaled) in bad.stderr
    data = json.loads(bad.stdout)
    assert json.loads(rep.read_text()) == data
    assert [c["passed"] for c in data["candidates"]] == [True, False]
    assert data["candidates"][1]["first_divergence"]["layer"] == 1
    assert data["candidates"][1]["tolerance"]["given"] is True
    suites = ET.parse(junit).getroot()
    assert suites.tag == "testsuites" and len(suites) == 2
    cases = suites[1].findall("testcase")
    assert {c.get("name") for c in cases} >= {"logits within tolerance", "finite", "top-1 agreement"}
    failed = [c for c in cases if c.find("failure") is not None]
    assert failed and "first divergence: layer 1" in failed[0].find("failure").text
    assert all(c.find("failure") is None for c in suites[0].findall("testcase"))


def test_cli_input_errors_exit_2(cli, llama, tmp_path):
    _, ref, _, _ = llama
    missing = cli("parity", ref, tmp_path / "nope.safetensors")
    assert missing.returncode == 2 and "nope.safetensors" in missing.stderr and "Traceback" not in missing.stderr
    if not torch.cuda.is_available():
        r = cli("parity", ref, ref, "--device", "cuda")
        assert r.returncode == 2 and "no CUDA device" in r.stderr
    assert cli("parity", ref).returncode == 2                       # no candidate


def test_cuda_without_gpu_is_refused(monkeypatch, llama):
    _, ref, _, _ = llama
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnsupportedError, match="--device cuda"):
        parity(ref, ref, device="cuda")
    assert parity(ref, ref, device="auto", seq_lens=(3,), new_tokens=0).torch_device == "cpu"


def test_prompts_through_the_source_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    state, config = faults.llama_state(seed=33)
    ref = faults.write_dir(tmp_path / "ref", state, config)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat runs fast red".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(str(ref))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\na dog runs\n")
    report = parity(ref, ref, prompts=prompts, new_tokens=3)
    assert report
    (inp,) = report.inputs
    assert inp["shapes"]["input_ids"] == [2, 8] and inp["left_pad"] == 3 and "2 prompts" in inp["label"]
    with pytest.raises(UnsupportedError, match="no tokenizer"):
        parity(faults.write_dir(tmp_path / "bare", state, config), ref, prompts=prompts)


def test_gptneox_from_transformers_module_passes_against_the_reference():
    from tests.models import tiny
    from modelport.models.runnable import from_module

    hf = tiny.gptneox(seed=34)

    class HF(torch.nn.Module):                 # transformers' own model, positions as generate() builds them
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return tiny.hf_logits(self.m, ids, mask)

    ref = from_module(HF(hf), kind=CAUSAL_LM, origin="transformers GPTNeoXForCausalLM", vocab_size=tiny.VOCAB)
    cand = from_module(tiny.ours_from_hf(hf), kind=CAUSAL_LM, origin="modelport reference gptneox",
                       vocab_size=tiny.VOCAB)
    report = parity(ref, cand, seq_lens=(1, 7), new_tokens=4)
    assert report, report.to_text()


def test_lua_nn_model_with_input_shape(cli):
    from pathlib import Path

    net = Path(__file__).resolve().parents[2] / "fixtures" / "t7nn" / "u1net.net"
    r = cli("parity", net, net, "--input-shape", "1,3,32,32", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["inputs"][0]["shapes"] == {"input": [1, 3, 32, 32]}
    assert data["candidates"][0]["outputs"][0]["positions"] == 12 * 12 * 12
    assert "Lua nn model" in data["reference"]["origin"]
    missing = cli("parity", net, net)
    assert missing.returncode == 2 and "--input-shape" in missing.stderr


def test_exported_files_through_the_command_line(cli, tmp_path):
    pytest.importorskip("onnxruntime")
    state, config = faults.llama_state(seed=35)
    ref = faults.write_dir(tmp_path / "ref", state, config)
    bad = faults.write_dir(tmp_path / "bad", faults.swap_layers(state, 1, 2), config)
    for src, dst, extra in ((ref, "m.onnx", ()), (ref, "m.pt", ("--to", "torchscript")), (bad, "bad.onnx", ())):
        r = cli("convert", src, tmp_path / dst, *extra)
        assert r.returncode == 0, r.stderr
    ok = cli("parity", ref, tmp_path / "m.onnx", tmp_path / "m.pt", "--seq-len", "1,6", "--new-tokens", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert [c["model"]["backend"] for c in data["candidates"]] == ["onnxruntime", "torchscript"]
    assert data["onnxruntime_providers"] == ["CPUExecutionProvider"]
    fail = cli("parity", ref, tmp_path / "bad.onnx", "--seq-len", "6", "--new-tokens", "2", "--json")
    assert fail.returncode == 1
    div = json.loads(fail.stdout)["candidates"][0]["first_divergence"]
    assert (div["layer"], div["method"]) == (1, "onnx-outputs")


def test_a_transformers_reference_keeps_inputs_inside_its_position_table(tmp_path):
    """GPT-2's learned positions end at n_positions: inputs are clipped to it whoever runs the reference."""
    model = faults.tiny.gpt2(seed=9)            # n_positions 20, shorter than the default longest input
    model.save_pretrained(tmp_path / "ref")
    model.save_pretrained(tmp_path / "copy")
    report = modelport.parity(tmp_path / "ref", tmp_path / "copy", new_tokens=3)
    assert report.reference["origin"] == "transformers GPT2LMHeadModel"
    assert report and max(i["seq_len"] for i in report.to_json()["inputs"]) + 3 <= 20
    report = modelport.parity(tmp_path / "ref", tmp_path / "copy", new_tokens=16)   # 16 new tokens would fill it
    assert report.new_tokens == 10 and max(i["seq_len"] for i in report.to_json()["inputs"]) == 10
