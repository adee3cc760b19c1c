"""Faults planted in one layer of an otherwise correct model: parity fails and names that layer."""

from __future__ import annotations

import json

import pytest
import torch

from modelport.models.runnable import from_module, load_runnable
from modelport.parity import parity
from modelport.parity.layers import block_names, onnx_scope

from . import faults


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    state, config = faults.llama_state(seed=21)
    root = tmp_path_factory.mktemp("llama")
    return root, state, config, faults.write_dir(root / "ref", state, config)


def _cli_fails_at(cli, ref, cand, layer: int, *extra):
    r = cli("parity", ref, cand, "--json", "--seq-len", "6", "--new-tokens", "2", *extra)
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    div = report["candidates"][0]["first_divergence"]
    assert div["layer"] == layer, div
    assert div["matched"] == list(range(layer))
    return div


def test_rotary_rows_in_meta_order(cli, llama):
    root, state, config, ref = llama
    cand = faults.write_dir(root / "rope", faults.rotary_meta_order(state, 2, config), config)
    div = _cli_fails_at(cli, ref, cand, 2)
    assert div["name"] == "model.layers.2.self_attn" and div["method"] == "hooks"


def test_layers_swapped(cli, llama):
    root, state, config, ref = llama
    cand = faults.write_dir(root / "swap", faults.swap_layers(state, 1, 2), config)
    _cli_fails_at(cli, ref, cand, 1)


def test_meta_shard_merged_on_wrong_axis(cli, llama):
    root, state, config, ref = llama
    cand = faults.write_dir(root / "shard", faults.shard_merged_on_wrong_axis(state, 1), config)
    div = _cli_fails_at(cli, ref, cand, 1)
    assert div["name"] == "model.layers.1.mlp"


def test_conv1d_weight_left_untransposed(cli, tmp_path):
    state, config = faults.gpt2_state(seed=22)
    ref = faults.write_dir(tmp_path / "ref", state, config)
    cand = faults.write_dir(tmp_path / "cand", faults.conv1d_untransposed(state, 1), config)
    div = _cli_fails_at(cli, ref, cand, 1)
    assert div["name"] == "transformer.h.1.attn"


def test_wrong_rmsnorm_epsilon_in_one_layer(llama):
    _, _, _, ref = llama
    ref_r = load_runnable(ref)
    cand_r = load_runnable(ref)
    cand_r.module.model.layers[2].post_attention_layernorm.eps = 0.5
    report = parity(ref_r, cand_r, seq_lens=(6,), new_tokens=2)
    assert not report
    div = report.candidates[0].first_divergence
    assert (div.layer, div.name) == (2, "model.layers.2.post_attention_layernorm")
    assert "first divergence: layer 2 (model.layers.2.post_attention_layernorm" in report.to_text()
    assert "layers 0–1 match" in report.to_text()


def test_fp16_overflow(llama):
    root, state, config, _ = llama
    path = faults.write_dir(root / "big", faults.fp16_overflow(state, 1), config)
    ref_r = load_runnable(path)
    cand_r = load_runnable(path, dtype="float16")
    report = parity(ref_r, cand_r, seq_lens=(6,), new_tokens=2)
    cand = report.candidates[0]
    assert not report and cand.tolerance.dtype == "float16"
    assert bool(torch.isfinite(ref_r.run({"input_ids": torch.ones(1, 3, dtype=torch.long),
                                          "attention_mask": torch.ones(1, 3, dtype=torch.long)})["logits"]).all())
    assert not next(c for c in cand.checks() if c.name == "finite").passed
    assert cand.first_divergence.layer == 1 and cand.first_divergence.max_abs is None   # non-finite
    assert "non-finite" in cand.first_divergence.describe()


def test_same_model_in_fp16_passes_fp16_defaults(llama):
    _, _, _, ref = llama
    report = parity(load_runnable(ref), load_runnable(ref, dtype="float16"), seq_lens=(6,), new_tokens=4)
    assert report, report.to_text()
    assert report.candidates[0].tolerance.dtype == "float16"


def test_onnx_candidate_names_the_layer_from_graph_values(llama, tmp_path):
    pytest.importorskip("onnxruntime")
    root, state, config, ref = llama
    bad = load_runnable(faults.write_dir(root / "swap-onnx", faults.swap_layers(state, 0, 2), config))
    for external in (False, True):
        cand = faults.ort_runnable(bad.module, tmp_path / f"bad-{external}.onnx", external_data=external)
        report = parity(load_runnable(ref), cand, seq_lens=(6,), new_tokens=2)
        div = report.candidates[0].first_divergence
        assert not report and div.method == "onnx-outputs" and div.layer == 0 and div.layers == 3
        assert report.to_json()["candidates"][0]["model"]["providers"] == ["CPUExecutionProvider"]
    assert (tmp_path / "bad-True.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-False.onnx", "bad-True.onnx", "bad-True.onnx.data"]


def test_torchscript_candidate_names_the_layer_by_replay(llama):
    root, state, config, ref = llama
    bad = load_runnable(faults.write_dir(root / "rope-ts", faults.rotary_meta_order(state, 1, config), config))
    report = parity(load_runnable(ref), faults.script_runnable(bad.module), seq_lens=(6,), new_tokens=2)
    div = report.candidates[0].first_divergence
    assert not report and div.method == "torchscript-replay"
    assert (div.layer, div.name, div.matched) == (1, "model.layers.1.self_attn", [0])


def test_block_names_from_the_family_table_or_the_module_tree():
    from tests.models import tiny

    assert block_names(tiny.ours_from_hf(tiny.gpt2()))[:2] == ["transformer.h.0", "transformer.h.1"]
    assert block_names(tiny.gptneox())[-1] == "gpt_neox.layers.2"          # a transformers model
    seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    assert block_names(seq) == ["0", "1"]
    assert onnx_scope("model.layers.3.self_attn") == "/model/layers.3/self_attn/"


def test_tensor_model_divergence_by_top_level_children():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    bad = torch.nn.Sequential(*[torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)])
    bad.load_state_dict(net.state_dict())
    with torch.no_grad():
        bad[2].bias.add_(0.01)
    from modelport.models.runnable import tensor_input

    spec = tensor_input("2,6")
    ref = from_module(net, kind="tensor", origin="net", input_spec=spec)
    report = parity(ref, from_module(bad, kind="tensor", origin="bad", input_spec=spec))
    div = report.candidates[0].first_divergence
    assert not report and (div.layer, div.name) == (2, "2")
    assert parity(ref, from_module(net, kind="tensor", origin="same", input_spec=spec))


def test_wrong_rmsnorm_epsilon_in_the_config(cli, llama):
    root, state, config, ref = llama
    cand = faults.write_dir(root / "eps", state, dict(config, rms_norm_eps=0.5))
    div = _cli_fails_at(cli, ref, cand, 0)
    assert div["name"] == "model.layers.0.input_layernorm"


def test_fp16_overflow_in_a_converted_file(cli, llama):
    root, state, config, _ = llama
    src = faults.write_dir(root / "big-src", faults.fp16_overflow(state, 1), config)
    half = root / "big-fp16"
    assert cli("convert", src, half, "--to", "hf", "--dtype", "fp16", "--allow-overflow").returncode == 0
    div = _cli_fails_at(cli, src, half, 1)
    assert div["max_abs"] is None          # the block's output is not finite


def test_onnx_from_the_dynamo_exporter_names_the_layer_from_its_scopes(llama, tmp_path):
    pytest.importorskip("onnxscript")
    import warnings

    from modelport.models.runnable import OrtRunnable, ort_session, token_inputs

    root, state, config, ref = llama
    bad = load_runnable(faults.write_dir(root / "swap-dynamo", faults.swap_layers(state, 1, 2), config))
    ids = torch.randint(0, bad.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "dynamo.onnx"
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bad.module, (ids, torch.ones_like(ids)), str(path), dynamo=True, verbose=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    session, _ = ort_session(path)
    cand = OrtRunnable(kind="causal-lm", inputs=token_inputs(), outputs=("logits",), origin="dynamo export", path=path,
                       device="cpu", vocab_size=bad.vocab_size, module=session)
    report = parity(load_runnable(ref), cand, seq_lens=(6,), new_tokens=2)
    div = report.candidates[0].first_divergence
    assert not report and div is not None, report.candidates[0].divergence_note
    assert (div.layer, div.method, div.matched) == (1, "onnx-outputs", [0])


def test_exports_of_a_transformers_model_and_torchscript_name_the_layer_with_the_default_engine(cli, llama):
    """An ONNX export run by transformers scopes its modules under the wrapper (``model.``, recorded in the
    file's strip_prefix); a TorchScript file from the default engine replays modelport's blocks while the
    reference runs in transformers. Both name the faulty layer."""
    root, state, config, ref = llama
    bad = faults.write_dir(root / "scaled-export", faults.scaled(state, "model.layers.1.mlp.down_proj.weight", 1.01),
                           config)
    onnx_file, script = root / "bad-tf.onnx", root / "bad.ts"
    assert cli("convert", bad, onnx_file, "--engine", "transformers", "--no-manifest").returncode == 0
    assert cli("convert", bad, script, "--to", "torchscript", "--no-manifest").returncode == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    assert meta.get("modelport.strip_prefix") == "model."
    div = _cli_fails_at(cli, ref, onnx_file, 1)
    assert div["method"] == "onnx-outputs" and div["name"].startswith("model.layers.1")
    div = _cli_fails_at(cli, ref, script, 1)
    assert div["method"] == "torchscript-replay" and div["name"] == "model.layers.1.mlp"
