"""Runnables from graph files and from transformers: read back, weights bitwise equal, running."""

from __future__ import annotations

import pytest
import torch

from modelport import formats
from modelport.convert.export import export, ExportOptions
from modelport.models.runnable import CAUSAL_LM, ENCODER, example_feeds, load_runnable

from ..conftest import bitwise_equal
from . import tiny

pytest.importorskip("onnxruntime")


def bert_dir(tmp_path, seed=31):
    import transformers

    cfg = transformers.BertConfig(vocab_size=tiny.VOCAB, hidden_size=24, num_attention_heads=4, num_hidden_layers=2,
                                  intermediate_size=40, max_position_embeddings=32, type_vocab_size=2)
    model = tiny.randomize(transformers.BertModel(cfg, add_pooling_layer=False), seed)
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", model


@pytest.mark.parametrize("fmt,name", [("onnx", "b.onnx"), ("torchscript", "b.pt")])
def test_bert_encoder_exports_both_ways_and_matches_transformers(tmp_path, fmt, name):
    src, hf = bert_dir(tmp_path)
    eager = load_runnable(src)
    assert eager.kind == ENCODER and eager.origin == "transformers BertModel"
    assert [i.name for i in eager.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    export(src, tmp_path / name, fmt)
    graph = load_runnable(tmp_path / name)
    assert graph.kind == ENCODER and [i.name for i in graph.inputs] == [i.name for i in eager.inputs]
    for b, t, pad in [(1, 1, 0), (2, 7, 0), (3, 11, 3)]:
        feeds = example_feeds(graph, batch=b, seq_len=t, seed=t, left_pad=pad)
        with torch.no_grad():
            want = hf(input_ids=feeds["input_ids"], attention_mask=feeds["attention_mask"],
                      token_type_ids=feeds["token_type_ids"]).last_hidden_state
        got = graph.run(feeds)["last_hidden_state"]
        real = feeds["attention_mask"].bool()
        assert (got - want)[real].abs().max().item() <= (1e-4 if fmt == "onnx" else 1e-5)


def test_engine_choice_is_stated_in_origin(tmp_path):
    tiny.llama(seed=32).save_pretrained(tmp_path / "llama")
    ref = load_runnable(tmp_path / "llama")
    hf = load_runnable(tmp_path / "llama", engine="transformers")
    assert ref.origin.startswith("modelport reference llama") and hf.origin == "transformers LlamaForCausalLM"
    assert hf.kind == CAUSAL_LM and hf.vocab_size == tiny.VOCAB
    feeds = example_feeds(ref, batch=3, seq_len=9, seed=1, left_pad=4)
    real = feeds["attention_mask"].bool()
    diff = (ref.run(feeds)["logits"] - hf.run(feeds)["logits"])[real].abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("fmt,name,engine", [("onnx", "g.onnx", "reference"), ("torchscript", "g.pt", "reference"),
                                             ("onnx", "g.onnx", "transformers"),
                                             ("torchscript", "g.pt", "transformers")])
def test_read_back_weights_bitwise_equal_and_runnable(tmp_path, fmt, name, engine):
    hf = tiny.gpt2(seed=33)                                   # tied lm_head = wte
    hf.save_pretrained(tmp_path / "src")
    export(tmp_path / "src", tmp_path / name, fmt, engine=engine)
    assert formats.detect(tmp_path / name).id == fmt
    with formats.open(tmp_path / "src") as a, formats.open(tmp_path / name) as b:
        want, got = {n: a.read(n) for n in a.names()}, {n: b.read(n) for n in b.names()}
        assert b.aliases() == {"lm_head.weight": "transformer.wte.weight"}      # the tied weight, stored once
    derived = {k for k in got if k.endswith((".attn.bias", ".attn.masked_bias"))}   # transformers' buffers
    assert set(got) - derived == set(want)
    for k in want:
        assert bitwise_equal(got[k], want[k]), k
    graph = load_runnable(tmp_path / name)
    out = graph.run(example_feeds(graph, batch=2, seq_len=5))["logits"]
    assert out.shape == (2, 5, tiny.VOCAB)


def test_tied_weight_stored_once_in_onnx(tmp_path):
    import onnx

    tiny.gpt2(seed=34).save_pretrained(tmp_path / "src")
    export(tmp_path / "src", tmp_path / "g.onnx", "onnx", options=ExportOptions(), engine="transformers")
    proto = onnx.load(str(tmp_path / "g.onnx"))
    vocab_sized = [t.name for t in proto.graph.initializer if list(t.dims) == [tiny.VOCAB, 24]]
    assert vocab_sized == ["model.transformer.wte.weight"]


@pytest.mark.parametrize("kind,found", [("overwrite", "__setstate__"), ("overwrite-nested", "torch.from_file"),
                                        ("forward-reads-file", "torch.from_file")])
def test_hostile_archive_is_refused_before_loading_unless_trusted(tmp_path, monkeypatch, kind, found):
    import modelport
    from modelport.errors import UnsafeContentError

    from ..adversarial import ts_payloads

    target = tmp_path / "victim.bin"
    target.write_bytes(b"original bytes of a file the archive names")
    path = ts_payloads.write(tmp_path / "evil.ts", kind, target)
    real_load, loads = torch.jit.load, []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(UnsafeContentError) as err:
        load_runnable(path, input_shape="1,4")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and found in message and "trust_torchscript=True" in message
    assert "\n" not in message and loads == [] and target.read_bytes().startswith(b"original")
    with modelport.trusted_torchscript():                      # the user vouches for the file: it runs
        graph = load_runnable(path, input_shape="1,4")
        graph.run(example_feeds(graph))
    assert len(loads) == 1
    if kind.startswith("overwrite"):
        assert target.read_bytes().startswith(b"AAAAAAAA")      # the payload is real
    load_runnable(path, input_shape="1,4", trust_torchscript=True)
    assert len(loads) == 2
