"""The contract of formats/base.py: every source says which files make up its model (``files()``),
every writer says what it wrote (``Format.write`` returns a ``WriteResult``) and leaves its source as
it was, and a wrapped source copies what it carries instead of sharing it."""

from __future__ import annotations

import pytest
import torch

from modelport import formats
from modelport.errors import UnsupportedError
from modelport.formats.base import ROLES, WrappedSource, WriteOptions, WriteResult
from modelport.formats.memory import StateDictSource
from modelport.models.layouts import to_layout

DIM, HEADS, KV_HEADS, FFN, VOCAB = 24, 4, 2, 40, 38      # pairwise distinct, GQA, even (two model-parallel shards)
HEAD = DIM // HEADS
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
          "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "intermediate_size": FFN,
          "vocab_size": VOCAB, "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False}


def llama_hub(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, DIM), "model.norm.weight": (DIM,), "lm_head.weight": (VOCAB, DIM)}
    for b in range(2):
        p = f"model.layers.{b}."
        shapes.update({p + "self_attn.q_proj.weight": (HEADS * HEAD, DIM), p + "self_attn.k_proj.weight": (KV_HEADS * HEAD, DIM),
                       p + "self_attn.v_proj.weight": (KV_HEADS * HEAD, DIM), p + "self_attn.o_proj.weight": (DIM, HEADS * HEAD),
                       p + "mlp.gate_proj.weight": (FFN, DIM), p + "mlp.up_proj.weight": (FFN, DIM),
                       p + "mlp.down_proj.weight": (DIM, FFN), p + "input_layernorm.weight": (DIM,),
                       p + "post_attention_layernorm.weight": (DIM,)})
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def _source(tmp_path, config=CONFIG):
    src = StateDictSource(llama_hub(), tmp_path / "in-memory", config=dict(config))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    src.side_files = {"tokenizer.json": tmp_path / "tokenizer.json"}
    return src


def _meta_params():
    from modelport.models.families import format_layout

    return format_layout("meta").config.to_native(CONFIG, {}, "test")


# case id: (format id, target name, the source in the layout the format holds, WriteOptions, weight files
# expected: "many" for a split by size, whose count the result says)
CASES = {
    "pt": ("pt", "m.pt", lambda s: s, lambda: WriteOptions(), 1),
    "safetensors": ("safetensors", "m.safetensors", lambda s: s, lambda: WriteOptions(), 1),
    "t7": ("t7", "m.t7", lambda s: s, lambda: WriteOptions(), 1),
    "hf": ("hf", "hf", lambda s: s, lambda: WriteOptions(config=CONFIG), 1),
    "hf-sharded": ("hf", "hf", lambda s: s, lambda: WriteOptions(config=CONFIG, shard_size=16000), "many"),
    "meta": ("meta", "meta", lambda s: to_layout(s, "llama-meta", CONFIG), lambda: WriteOptions(config=_meta_params()), 1),
    "meta-tp2": ("meta", "meta", lambda s: to_layout(s, "llama-meta", CONFIG),
                 lambda: WriteOptions(config=_meta_params(), shards=2), 2),
}
GRAPH = [f.id for f in formats.all_formats() if f.graph]


def test_every_format_is_covered():
    """A new format is added to CASES (a weight format) or written by export (a graph format)."""
    assert {fid for fid, *_ in CASES.values()} | set(GRAPH) == {f.id for f in formats.all_formats()}


def _on_disk(dst):
    return {dst} if dst.is_file() else {p for p in dst.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("case", CASES)
def test_the_write_result_lists_exactly_the_files_written(tmp_path, case):
    fid, name, layout, options, n_weights = CASES[case]
    src = layout(_source(tmp_path))
    before = (list(src.notes), dict(src.metadata), dict(src.config), dict(src.side_files))
    dst = tmp_path / name
    result = formats.get(fid).write(src, dst, options(), None)
    assert isinstance(result, WriteResult)
    assert len(set(result.files)) == len(result.files) and set(result.files) == _on_disk(dst)
    assert (list(src.notes), dict(src.metadata), dict(src.config), dict(src.side_files)) == before   # not changed
    assert set(result.shards) <= set(result.files)
    if n_weights == "many":
        n_weights = len(result.shards)
        assert n_weights > 2
    assert len(result.shards) == (n_weights if n_weights > 1 else 0)
    if dst.is_dir():
        assert dst / "tokenizer.json" in result.files            # carried files count as written
    # read back, the written model lists the same files, weights first and in the shards' order
    with formats.open(dst, fid) as back:
        listed = back.files()
        assert {f.path for f in listed} == set(result.files)
        assert all(f.role in ROLES for f in listed)
        weights = [f.path for f in listed if f.role == "weights"]
        assert len(weights) == n_weights and listed[:n_weights] == [f for f in listed if f.role == "weights"]
        if result.shards:
            assert weights == list(result.shards)
            assert back.model_parallel == result.model_parallel


@pytest.mark.parametrize("fid", GRAPH)
def test_graph_formats_refuse_a_plain_write_and_write_nothing(tmp_path, fid):
    dst = tmp_path / f"m.{fid}"
    with pytest.raises(UnsupportedError, match="export"):
        formats.get(fid).write(_source(tmp_path), dst, WriteOptions())
    assert not dst.exists()


def test_the_hf_writer_reports_assumed_values_without_touching_its_source(tmp_path):
    src = _source(tmp_path)
    result = formats.get("hf").write(src, tmp_path / "hf", WriteOptions(config={**CONFIG, "_modelport_assumed": ["rope_theta"]}))
    assert src.notes == []
    assert len(result.notes) == 1 and "assumed: rope_theta" in result.notes[0]


def test_a_source_in_memory_has_no_files(tmp_path):
    assert StateDictSource(llama_hub()).files() == []


def test_a_wrapper_copies_what_it_carries_and_passes_files_through(tmp_path):
    inner = _source(tmp_path)
    inner.notes.append("read")
    inner.metadata["k"] = "v"
    outer = WrappedSource(inner)
    outer.notes.append("wrapped")
    outer.metadata["k2"] = "v2"
    outer.config["extra"] = 1
    outer.side_files.clear()
    assert inner.notes == ["read"] and inner.metadata == {"k": "v"} and "extra" not in inner.config
    assert inner.side_files and outer.notes == ["read", "wrapped"]
    assert outer.files() == inner.files() and outer.inner is inner
    mapped = to_layout(inner, "llama-meta", CONFIG)
    assert isinstance(mapped, WrappedSource) and inner.notes == ["read"]
    assert mapped.notes[-1] == "layout llama-hf mapped to llama-meta"
