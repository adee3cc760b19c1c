"""One runnable notion: reference models, user modules and Lua nn models all run through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelport.errors import UnsupportedError
from modelport.models.runnable import CAUSAL_LM, TENSOR, example_feeds, load_runnable

from . import tiny

ROOT = Path(__file__).resolve().parents[2]


def test_reference_model_runs_with_left_padded_feeds(tmp_path):
    from safetensors.torch import save_file

    hf = tiny.llama(seed=3)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "w.safetensors")
    cfg = tmp_path / "config.json"
    cfg.write_text(hf.config.to_json_string())
    r = load_runnable(tmp_path / "w.safetensors", config=cfg)
    assert r.kind == CAUSAL_LM and r.backend == "torch" and r.device == "cpu"
    assert [i.name for i in r.inputs] == ["input_ids", "attention_mask"] and r.outputs == ("logits",)
    assert r.inputs[0].dynamic_axes == {0: "batch", 1: "sequence"}
    assert "llama" in r.origin and r.vocab_size == tiny.VOCAB
    feeds = example_feeds(r, batch=3, seq_len=9, seed=5, left_pad=4)
    assert feeds["attention_mask"][-1, :4].sum() == 0 and feeds["attention_mask"][:-1].all()
    assert feeds["input_ids"].max() > 1                      # spread over the vocabulary, not 0/1
    logits = r.run(feeds)["logits"]
    want = tiny.hf_logits(hf, feeds["input_ids"], feeds["attention_mask"])
    real = feeds["attention_mask"].bool()
    assert (logits - want)[real].abs().max().item() <= 1e-5


def test_feeds_are_seeded():
    r = load_runnable(ROOT / "fixtures" / "t7nn" / "u1net.net", input_shape="1,3,32,32")
    a, b, c = (example_feeds(r, seed=s)["input"] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lua_model_is_a_tensor_model():
    r = load_runnable(ROOT / "fixtures" / "t7nn" / "u1net.net", input_shape="1,3,32,32")
    assert r.kind == TENSOR and r.inputs[0].shape == (1, 3, 32, 32) and r.inputs[0].dtype == "float32"
    out = r.run(example_feeds(r))["output"]
    assert out.shape == (1, 12, 12, 12)
    assert torch.equal(out, r.module(example_feeds(r)["input"]))


def test_lua_model_without_input_shape_is_refused():
    with pytest.raises(UnsupportedError, match="--input-shape"):
        load_runnable(ROOT / "fixtures" / "t7nn" / "u1net.net")


def test_onnx_graph_runs_through_the_same_interface(tmp_path):
    import warnings

    from modelport.models.runnable import OrtRunnable, ort_session, token_inputs

    pytest.importorskip("onnxruntime")
    model = tiny.ours_from_hf(tiny.gpt2(seed=4))
    ids, mask = tiny.batch(seed=2)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "logits")})
    session, providers = ort_session(path)
    assert providers == ["CPUExecutionProvider"]
    r = OrtRunnable(kind=CAUSAL_LM, inputs=token_inputs(), outputs=("logits",), origin="onnx", path=path,
                    device="cpu", vocab_size=tiny.VOCAB, module=session)
    feeds = example_feeds(r, batch=2, seq_len=6, seed=1, left_pad=2)
    with torch.no_grad():
        want = model(feeds["input_ids"], feeds["attention_mask"])
    got = r.run(feeds)["logits"]
    real = feeds["attention_mask"].bool()
    assert (got - want)[real].abs().max().item() <= 1e-5


def test_one_maker_per_format_and_the_keyword_form_fills_the_spec(tmp_path):
    from modelport.models.runnable import MAKERS, LoadSpec, load_runnable as load, register_maker

    hf = tiny.llama(seed=4)
    hf.save_pretrained(tmp_path / "hf")
    by_spec = load(tmp_path / "hf", LoadSpec(engine="reference"))
    by_words = load(tmp_path / "hf", engine="reference")
    assert by_spec.made_by == by_words.made_by == "reference" and by_spec.origin == by_words.origin
    assert load(tmp_path / "hf", LoadSpec(engine="reference"), engine="transformers").made_by == "transformers"
    assert {"torchscript", "onnx", "hf", "t7"} <= set(MAKERS)
    with pytest.raises(ValueError, match="already registered"):
        register_maker("onnx", MAKERS["onnx"])
    with pytest.raises(TypeError, match="unexpected load option"):
        load(tmp_path / "hf", enigne="reference")
    with pytest.raises(UnsupportedError, match="--engine transformers runs Hugging Face directories"):
        load(ROOT / "fixtures" / "t7nn" / "u1net.net", input_shape="1,3,32,32", engine="transformers")


def test_capture_is_the_runnables_own(tmp_path):
    """Per-layer outputs come from the runnable: hooks on an eager model, one per named block, in run order."""
    hf = tiny.llama(seed=6)
    hf.save_pretrained(tmp_path / "hf")
    r = load_runnable(tmp_path / "hf", engine="reference")
    names = ["model.layers.0", "model.layers.1", "model.nope"]
    feeds = example_feeds(r, batch=2, seq_len=5)
    outputs, method = r.capture(names, feeds)
    assert method == "hooks" and list(outputs) == names[:2]
    assert outputs["model.layers.0"].shape == (2, 5, hf.config.hidden_size)
    _, inputs, order = r.capture_with_inputs(names, feeds)
    assert order == names[:2] and inputs["model.layers.1"][0].shape == (2, 5, hf.config.hidden_size)
