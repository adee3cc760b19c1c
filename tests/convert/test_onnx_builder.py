"""The ONNX builder: graphs built from the family records run in onnxruntime and match transformers
on left-padded batches, with and without the key/value cache, at opsets across 14-24; greedy generation
feeding ``present`` back as ``past_key_values`` equals transformers' greedy; weights keep their names,
tied ones stored once; export() picks the builder for known families and the tracer otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from modelport.convert.export import ExportOptions, export
from modelport.convert.onnx_builder import build_onnx
from modelport.convert.onnx_builder.generate import greedy
from modelport.errors import DestinationExistsError, UnsupportedError

from ..models import tiny
from ..models.test_config import LLAMA3
from ..models.test_qwen2 import qwen2

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# (id, model maker, opset): every family and its variants, opsets spread over the range so both the
# decompositions (ReduceMean with axes as attribute / input, LayerNormalization from 17) and, at 23 and 24,
# the Attention, RotaryEmbedding and RMSNormalization nodes are exercised for every family
CASES = [
    ("llama-gqa", lambda: tiny.llama(seed=31), 14),
    ("llama-tied-llama3-rope", lambda: tiny.llama(seed=32, tie_word_embeddings=True, rope_scaling=LLAMA3), 17),
    ("llama-opset23", lambda: tiny.llama(seed=33), 23),
    ("llama-tied-llama3-rope-opset24", lambda: tiny.llama(seed=39, tie_word_embeddings=True, rope_scaling=LLAMA3), 24),
    ("qwen2-biases", lambda: qwen2(seed=34), 18),
    ("qwen2-opset23", lambda: qwen2(seed=56), 23),
    ("gpt2", lambda: tiny.gpt2(seed=35), 16),
    ("gpt2-opset23", lambda: tiny.gpt2(seed=57), 23),
    ("gpt2-opset24", lambda: tiny.gpt2(seed=36, scale_attn_by_inverse_layer_idx=True), 24),
    ("gptneox-parallel", lambda: tiny.gptneox(seed=37), 17),
    ("gptneox-sequential", lambda: tiny.gptneox(seed=38, use_parallel_residual=False), 21),
    ("gptneox-partial-rotary-opset23", lambda: tiny.gptneox(seed=58), 23),
    ("gptneox-sequential-opset24", lambda: tiny.gptneox(seed=59, use_parallel_residual=False), 24),
]
FUSED = {"Attention", "RotaryEmbedding", "RMSNormalization"}


def _save(model, path):
    model.save_pretrained(path)
    if model.config.model_type == "gpt_neox":            # published NeoX checkpoints name the output embed_out
        from safetensors.torch import load_file, save_file

        f = path / "model.safetensors"
        save_file({("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in load_file(f).items()},
                  f, metadata={"format": "pt"})
    return path


def _past(session, batch: int, dtype=np.float32) -> dict:
    return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=dtype)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}


def _hf_greedy(model, ids, mask, n: int) -> np.ndarray:
    """transformers' greedy tokens, recomputing the whole (left-padded) sequence at each step."""
    out = []
    for _ in range(n):
        nxt = tiny.hf_logits(model, ids, mask)[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1).numpy()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_built_graph_matches_transformers_with_and_without_cache(case, tmp_path):
    _, make, opset = case
    model = make()
    src = _save(model, tmp_path / "hf")
    ids, mask = tiny.batch()
    want = tiny.hf_logits(model, ids, mask).numpy()
    real = mask.bool().numpy()
    for kv in (True, False):            # the cache with external data, the logits-only graph with tensors inside
        dst = tmp_path / f"kv{kv}" / "model.onnx"
        result = build_onnx(src, dst, options=ExportOptions(opset=opset, kv_cache=kv, external_data=kv))
        assert result.opset == opset and result.external_data == (dst.with_name("model.onnx.data") if kv else None)
        assert dst.with_name("model.onnx.data").is_file() == kv
        proto = onnx.load(str(dst), load_external_data=False)
        assert [o.version for o in proto.opset_import if o.domain == ""] == [opset]
        ops = {n.op_type for n in proto.graph.node}
        if opset >= 23:       # the opset's own nodes, not the decomposition (no MatMul of scores, no Softmax)
            assert "Attention" in ops and not ops & {"Softmax", "MatMul"}
            assert ("RotaryEmbedding" in ops) == (model.config.model_type != "gpt2")
            assert ("RMSNormalization" in ops) == (model.config.model_type in ("llama", "qwen2"))
        else:
            assert not ops & FUSED and "Softmax" in ops
        session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        if kv:
            assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
            assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
            assert [o.name for o in session.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
            feeds["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).numpy()
            feeds.update(_past(session, 3))
            assert (dst.parent / "genai_config.json").is_file()
        else:
            assert names == ["input_ids", "attention_mask"]
            assert not (dst.parent / "genai_config.json").exists()
        got = session.run(["logits"], feeds)[0]
        assert got.shape == want.shape
        diff = np.abs(got - want)[real].max()
        assert diff <= 1e-4, f"max |onnx - transformers| = {diff}"
        if kv:     # the first 6 tokens, then the last 3 with the first ones' present as past (left padding kept)
            first = session.run(None, {"input_ids": feeds["input_ids"][:, :6], "attention_mask": feeds["attention_mask"][:, :6],
                                       "position_ids": feeds["position_ids"][:, :6], **_past(session, 3)})
            past = {n.replace("present.", "past_key_values."): v
                    for n, v in zip([o.name for o in session.get_outputs()][1:], first[1:])}
            assert all(v.shape[2] == 6 for v in past.values())
            rest = session.run(["logits"], {"input_ids": feeds["input_ids"][:, 6:], "attention_mask": feeds["attention_mask"],
                                            "position_ids": feeds["position_ids"][:, 6:], **past})[0]
            diff = np.abs(rest - want[:, 6:])[real[:, 6:]].max()
            assert diff <= 1e-4, f"with a past of 6 tokens: max |onnx - transformers| = {diff}"


@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("make", [lambda: tiny.llama(seed=41), lambda: tiny.gpt2(seed=42, n_positions=40),
                                  lambda: tiny.gptneox(seed=43)], ids=["llama", "gpt2", "gptneox"])
def test_greedy_with_the_cache_equals_transformers_greedy(make, opset, tmp_path):
    model = make()
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(_save(model, tmp_path / "hf"), dst, options=ExportOptions(opset=opset))
    ids, mask = tiny.batch(t=7)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = greedy(session, ids.numpy(), mask.numpy(), 10)
    np.testing.assert_array_equal(got, _hf_greedy(model, ids, mask, 10))


def test_initializers_keep_checkpoint_names_and_a_tied_weight_is_stored_once(tmp_path):
    model = tiny.llama(seed=44, tie_word_embeddings=True)
    src = _save(model, tmp_path / "hf")
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(src, dst, options=ExportOptions(kv_cache=False, external_data=True))
    proto = onnx.load(str(dst), load_external_data=False)
    external = {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    want = {k for k in model.state_dict() if k != "lm_head.weight"}
    assert external == want
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["modelport.aliases"]) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert meta["modelport.opset"] == "17" and "no tensor transposed" in meta["modelport.weights"]
    total = sum(t.numel() * 4 for k, t in model.state_dict().items() if k != "lm_head.weight")
    size = dst.with_name("model.onnx.data").stat().st_size
    assert total <= size < total + 64 * 1024


def test_tensors_go_inside_the_file_unless_external_data_is_asked_or_it_is_past_2_gib(tmp_path, monkeypatch):
    import importlib

    from modelport import formats

    builder = importlib.import_module("modelport.convert.onnx_builder")

    model = tiny.llama(seed=62, tie_word_embeddings=True)
    src = _save(model, tmp_path / "hf")
    inline = build_onnx(src, tmp_path / "in" / "model.onnx", options=ExportOptions(dtype="fp16"))
    ext = build_onnx(src, tmp_path / "ex" / "model.onnx", options=ExportOptions(dtype="fp16", external_data=True))
    assert inline.external_data is None and sorted(p.name for p in (tmp_path / "in").iterdir()) == \
        ["genai_config.json", "model.onnx"]
    assert inline.bytes == (tmp_path / "in" / "model.onnx").stat().st_size
    onnx.checker.check_model(str(tmp_path / "in" / "model.onnx"))
    assert formats.detect(tmp_path / "in" / "model.onnx").id == "onnx"          # sniffed: ir_version comes first
    a, b = onnx.load(str(tmp_path / "in" / "model.onnx")), onnx.load(str(tmp_path / "ex" / "model.onnx"))
    assert all(t.data_location == onnx.TensorProto.DEFAULT and t.raw_data for t in a.graph.initializer)
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert {t.name for t in a.graph.initializer} == set(tensors)
    for t in a.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), tensors[t.name])
    assert a.graph.node == b.graph.node and a.graph.input == b.graph.input and a.opset_import == b.opset_import
    assert {p.key: p.value for p in a.metadata_props} == {p.key: p.value for p in b.metadata_props}
    ids, mask = (t.numpy() for t in tiny.batch(t=5))
    got = [greedy(ort.InferenceSession(str(tmp_path / d / "model.onnx"), providers=["CPUExecutionProvider"]), ids, mask, 4)
           for d in ("in", "ex")]
    np.testing.assert_array_equal(*got)

    monkeypatch.setattr(builder, "PROTOBUF_LIMIT", inline.bytes - 1)   # one byte too many for one file
    big = build_onnx(src, tmp_path / "big" / "model.onnx", options=ExportOptions(dtype="fp16"))
    assert big.external_data == tmp_path / "big" / "model.onnx.data" and big.external_data.is_file()
    assert any("2 GiB" in n for n in big.notes)
    monkeypatch.setattr(builder, "PROTOBUF_LIMIT", inline.bytes)
    assert build_onnx(src, tmp_path / "fit" / "model.onnx", options=ExportOptions(dtype="fp16")).external_data is None


def test_export_picks_the_builder_for_known_families_and_keeps_the_guarantees(tmp_path):
    src = _save(tiny.gpt2(seed=45), tmp_path / "hf")
    dst = tmp_path / "out" / "model.onnx"
    built = export(src, dst, "onnx")
    assert built.exporter.startswith("modelport ONNX builder") and built.max_abs_diff is None
    with pytest.raises(DestinationExistsError):
        export(src, dst, "onnx")
    before = dst.read_bytes()
    traced = export(src, tmp_path / "t" / "model.onnx", "onnx", options=ExportOptions(exporter="torch"))
    assert traced.exporter.startswith("torch.onnx.export")
    again = export(src, dst, "onnx", options=ExportOptions(opset=15, kv_cache=False), force=True)
    assert again.opset == 15 and dst.read_bytes() != before
    assert sorted(p.name for p in dst.parent.iterdir()) == ["genai_config.json", "model.onnx"]


def test_builder_refuses_what_it_cannot_build(tmp_path):
    src = _save(tiny.gpt2(seed=46), tmp_path / "hf")
    with pytest.raises(UnsupportedError, match="static-shapes"):
        build_onnx(src, tmp_path / "a.onnx", options=ExportOptions(static_shapes=True))
    with pytest.raises(UnsupportedError, match="--exporter"):
        export(src, tmp_path / "b.onnx", "onnx", options=ExportOptions(exporter="nope"))
    assert not any(p.name.endswith((".onnx", ".data", ".json")) for p in tmp_path.iterdir())


def test_the_built_graph_runs_as_a_modelport_runnable(tmp_path):
    from modelport.models.graph import onnx_runnable
    from modelport.models.runnable import example_feeds

    model = tiny.llama(seed=47)
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(_save(model, tmp_path / "hf"), dst, options=ExportOptions())
    graph = onnx_runnable(dst)
    assert [i.name for i in graph.inputs] == ["input_ids", "attention_mask"] and graph.outputs == ("logits",)
    feeds = example_feeds(graph, batch=2, seq_len=6, seed=3, left_pad=2)
    got = graph.run(feeds)["logits"]
    want = tiny.hf_logits(model, feeds["input_ids"], feeds["attention_mask"])
    real = feeds["attention_mask"].bool()
    assert (got - want)[real].abs().max().item() <= 1e-4


@pytest.mark.parametrize("opset", [17, 23])
def test_fp16_graph_runs_on_cpu_and_stays_close(opset, tmp_path):
    model = tiny.llama(seed=48)
    src = _save(model, tmp_path / "hf")
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(src, dst, options=ExportOptions(dtype="fp16", opset=opset))
    proto = onnx.load(str(dst), load_external_data=False)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert "float32" in {p.key: p.value for p in proto.metadata_props}["modelport.float32"]
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    ids, mask = tiny.batch()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).numpy(), **_past(session, 3, np.float16)}
    got = session.run(["logits"], feeds)[0]
    assert got.dtype == np.float16
    want = tiny.hf_logits(model, ids, mask).numpy()
    diff = np.abs(got.astype(np.float32) - want)[mask.bool().numpy()].max()
    assert diff <= 2e-2 * max(1.0, np.abs(want).max()), diff


GENAI_PYTHON = os.environ.get("MODELPORT_GENAI_PYTHON")


def _genai_python() -> str | None:
    """A Python with onnxruntime-genai: this one, or MODELPORT_GENAI_PYTHON (a side environment, since
    the package pins its own onnxruntime)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is not None:
        return sys.executable
    return GENAI_PYTHON


@pytest.mark.skipif(_genai_python() is None, reason="onnxruntime-genai is not installed here (pip install "
                    "onnxruntime-genai, or set MODELPORT_GENAI_PYTHON to a Python that has it)")
@pytest.mark.parametrize("make,opset", [(lambda: tiny.llama(seed=49), 17), (lambda: qwen2(seed=51), 17),
                                        (lambda: tiny.gpt2(seed=52), 17), (lambda: tiny.gptneox(seed=53), 17),
                                        (lambda: tiny.llama(seed=60), 23), (lambda: tiny.gptneox(seed=61), 24)],
                         ids=["llama", "qwen2", "gpt2", "gptneox", "llama-opset23", "gptneox-opset24"])
def test_onnxruntime_genai_runs_a_built_graph(make, opset, tmp_path):
    model = make()
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(_save(model, tmp_path / "hf"), dst, options=ExportOptions(opset=opset))
    prompt = [3, 14, 15, 9, 26]
    script = ("import sys, numpy as np, onnxruntime_genai as og\n"
              "m = og.Model(sys.argv[1]); p = og.GeneratorParams(m)\n"
              "p.set_search_options(max_length=13, do_sample=False)\n"
              "g = og.Generator(m, p); g.append_tokens(np.array([[3, 14, 15, 9, 26]], dtype=np.int32))\n"
              "while not g.is_done(): g.generate_next_token()\n"
              "print(','.join(str(int(t)) for t in g.get_sequence(0)))\n")
    out = subprocess.run([_genai_python(), "-c", script, str(dst.parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    tokens = [int(t) for t in out.stdout.strip().splitlines()[-1].split(",")]
    ids = torch.tensor([prompt])
    want = _hf_greedy(model, ids, torch.ones_like(ids), 8)[0].tolist()
    eos = json.loads((dst.parent / "genai_config.json").read_text())["model"]["eos_token_id"]
    got = tokens[len(prompt):]
    assert got == want[:len(got)] and (len(got) == 8 or want[len(got)] == eos), (got, want)


OPTIMUM_PYTHON = os.environ.get("MODELPORT_OPTIMUM_PYTHON")


@pytest.mark.skipif(OPTIMUM_PYTHON is None, reason="set MODELPORT_OPTIMUM_PYTHON to a Python with optimum-onnx and "
                    "onnxruntime (a side environment: optimum pins transformers 4)")
def test_optimum_ort_model_for_causal_lm_runs_a_built_graph_with_its_cache(tmp_path):
    model = tiny.llama(seed=63)
    src = _save(model, tmp_path / "hf")
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(src, dst, options=ExportOptions())
    cfg = json.loads((src / "config.json").read_text())       # optimum reads config.json beside the graph;
    cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 500.0)   # transformers 4 spells rope so
    (dst.parent / "config.json").write_text(json.dumps(cfg))
    ids, mask = tiny.batch(t=7)
    script = ("import json, sys, torch\nfrom optimum.onnxruntime import ORTModelForCausalLM\n"
              "m = ORTModelForCausalLM.from_pretrained(sys.argv[1], file_name='model.onnx', use_cache=True, "
              "use_io_binding=False)\nassert m.can_use_cache\n"
              "ids, mask = torch.tensor(json.loads(sys.argv[2])), torch.tensor(json.loads(sys.argv[3]))\n"
              "out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, "
              "eos_token_id=None)\nprint(json.dumps(out[:, ids.shape[1]:].tolist()))\n")
    out = subprocess.run([OPTIMUM_PYTHON, "-c", script, str(dst.parent), json.dumps(ids.tolist()), json.dumps(mask.tolist())],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-800:]
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_array_equal(got, _hf_greedy(model, ids, mask, 10))


def test_cli_builds_by_default_and_traces_when_asked(tmp_path):
    from click.testing import CliRunner

    from modelport.cli import cli

    src = _save(tiny.llama(seed=50), tmp_path / "hf")
    built = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "b" / "m.onnx"), "--no-kv-cache"])
    assert built.exit_code == 0, built.output
    assert "built, not run against eager" in built.output and (tmp_path / "b" / "m.onnx.modelport.json").is_file()
    session = ort.InferenceSession(str(tmp_path / "b" / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    again = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "b" / "m.onnx")])
    assert isinstance(again.exception, DestinationExistsError)
    traced = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "t.onnx"), "--exporter", "torch"])
    assert traced.exit_code == 0 and "matches eager within" in traced.output, traced.output


def test_a_bfloat16_checkpoint_is_cast_to_float32_in_chunks(tmp_path):
    import copy

    model = tiny.llama(seed=54)
    with torch.no_grad():
        for p in model.parameters():           # values bfloat16 holds exactly (rotary buffers stay float32)
            p.copy_(p.to(torch.bfloat16).float())
    src = _save(copy.deepcopy(model).to(torch.bfloat16), tmp_path / "hf")
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(src, dst, options=ExportOptions(kv_cache=False))
    proto = onnx.load(str(dst), load_external_data=False)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}
    ids, mask = tiny.batch()
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    want = tiny.hf_logits(model, ids, mask).numpy()
    assert np.abs(got - want)[mask.bool().numpy()].max() <= 1e-4


def test_a_meta_checkpoint_is_built_through_its_layout_table(tmp_path):
    from modelport.convert import convert

    model = tiny.llama(seed=55)
    src = _save(model, tmp_path / "hf")
    convert(src, tmp_path / "meta", to="meta", manifest=False)
    dst = tmp_path / "out" / "model.onnx"
    build_onnx(tmp_path / "meta", dst, options=ExportOptions(kv_cache=False))
    ids, mask = tiny.batch()
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    want = tiny.hf_logits(model, ids, mask).numpy()
    assert np.abs(got - want)[mask.bool().numpy()].max() <= 1e-4
