"""Layout tables: exact inverses, derived reverse rules, refusals, lazy per-tensor transforms,
GPT-2 HF (Conv1D) <-> nanoGPT (nn.Linear)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import modelport
from modelport import formats
from modelport.convert.layouts import adapt
from modelport.models import layouts, transforms
from modelport.models.family import Layout, Rule
from modelport.models.layouts import LAYOUTS, LayoutSource, detect_layout, forward_patterns, reverse_patterns
from modelport.errors import LayoutError
from modelport.formats.base import Options
from modelport.formats.memory import StateDictSource
from tests.conftest import bitwise_equal

ARGS = {"permute_rope_meta_to_hf": {"n_heads": 3}, "permute_rope_hf_to_meta": {"n_heads": 3},
        "reorder_qkv_neox_to_blocked": {"n_heads": 2}, "reorder_qkv_blocked_to_neox": {"n_heads": 2}, "transpose": {}}


class DictSource(StateDictSource):
    """Torch tensors in memory, counting reads."""

    def __init__(self, tensors, config=None, path="mem"):
        super().__init__(tensors, path, config)
        self.reads = []

    def read_bytes(self, name):
        self.reads.append(name)
        return super().read_bytes(name)


@pytest.mark.parametrize("name", sorted(transforms.TRANSFORMS))
def test_every_transform_has_an_exact_inverse(name):
    t = transforms.get(name)
    inv = transforms.get(t.inverse)
    assert inv.inverse == name
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(2 * 3 * 2 * 2, 5, generator=g), torch.randn(24, generator=g).bfloat16()):
        if name == "transpose" and x.dim() != 2:
            continue
        y = t.apply(x, **ARGS[name])
        assert tuple(y.shape) == transforms.out_shape(name, tuple(x.shape), ARGS[name], "x")
        assert not torch.equal(y, x)
        assert bitwise_equal(inv.apply(y, **ARGS[t.inverse]).contiguous(), x)
        a = x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()   # numpy arrays too
        assert np.array_equal(np.ascontiguousarray(t.apply(a, **ARGS[name])), y.contiguous().view(torch.int16).numpy()
                              if x.dtype == torch.bfloat16 else y.contiguous().numpy())


def test_rope_permute_is_the_hf_conversion_permutation():
    """Meta row 2*i + j of each head is HF row j * head_dim/2 + i."""
    n_heads, hd = 3, 8
    meta = torch.arange(n_heads * hd)
    hf = transforms.permute_rope_meta_to_hf(meta, n_heads=n_heads)
    for h in range(n_heads):
        for i in range(hd // 2):
            for j in range(2):
                assert hf[h * hd + j * hd // 2 + i] == meta[h * hd + 2 * i + j]


@pytest.mark.parametrize("layout_id", sorted(LAYOUTS))
def test_tables_are_unambiguous_and_reverse_is_derived(layout_id):
    lay = LAYOUTS[layout_id]
    for rule in lay.rules:
        name = rule.name.replace("{bid}", "7")
        found = layouts._match(forward_patterns(lay), name)
        assert [r for r, _ in found] == [rule]
        if rule.hub is not None:
            hub = rule.hub.replace("{bid}", "7")
            back = layouts._match(reverse_patterns(lay), hub)
            assert [(r, b) for r, b in back] == [(rule, "7" if "{bid}" in rule.hub else None)]
            if rule.transform:
                assert layouts.inverse_step(rule, {"n_heads": 4, "n_kv_heads": 2}, name)[0][0] == transforms.get(rule.transform).inverse


def _llama_hf(g, dim=24, n_heads=4, n_kv=2, ffn=40, vocab=37, layers=2):
    hd = dim // n_heads
    t = {"model.embed_tokens.weight": torch.randn(vocab, dim, generator=g), "model.norm.weight": torch.randn(dim, generator=g),
         "lm_head.weight": torch.randn(vocab, dim, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": torch.randn(n_heads * hd, dim, generator=g),
                  p + "self_attn.k_proj.weight": torch.randn(n_kv * hd, dim, generator=g),
                  p + "self_attn.v_proj.weight": torch.randn(n_kv * hd, dim, generator=g),
                  p + "self_attn.o_proj.weight": torch.randn(dim, n_heads * hd, generator=g),
                  p + "mlp.gate_proj.weight": torch.randn(ffn, dim, generator=g),
                  p + "mlp.up_proj.weight": torch.randn(ffn, dim, generator=g),
                  p + "mlp.down_proj.weight": torch.randn(dim, ffn, generator=g),
                  p + "input_layernorm.weight": torch.randn(dim, generator=g),
                  p + "post_attention_layernorm.weight": torch.randn(dim, generator=g)})
    cfg = {"model_type": "llama", "hidden_size": dim, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
           "intermediate_size": ffn, "vocab_size": vocab, "num_hidden_layers": layers}
    return t, cfg


def test_llama_hf_to_meta_and_back_streams_one_tensor_at_a_time():
    tensors, cfg = _llama_hf(torch.Generator().manual_seed(1))
    src = DictSource(tensors, cfg)
    assert detect_layout(src).id == "llama-hf"
    meta = adapt(src, formats.get("meta"), Options())
    assert isinstance(meta, LayoutSource) and meta.config == cfg
    assert src.reads == []                                      # lazy: nothing read yet
    assert meta.transforms_of("layers.1.attention.wk.weight") == ["permute_rope_hf_to_meta(n_heads=2)"]
    assert meta.transforms_of("layers.1.attention.wq.weight") == ["permute_rope_hf_to_meta(n_heads=4)"]
    assert meta.transforms_of("layers.1.attention.wv.weight") == []
    meta.read("layers.1.attention.wq.weight")
    assert src.reads == ["model.layers.1.self_attn.q_proj.weight"]
    assert detect_layout(meta).id == "llama-meta"
    back = adapt(meta, "safetensors", Options(layout="llama-hf"))
    assert sorted(back.names()) == sorted(tensors)
    for n, t in tensors.items():
        assert bitwise_equal(back.read(n), t), n
    # llama-meta -> llama-meta through a LayoutSource is the identity: no transform, nothing composed
    assert adapt(meta, "meta", Options()) is meta


def test_untransformed_tensors_keep_their_span(tmp_path):
    from safetensors.torch import save_file

    tensors, cfg = _llama_hf(torch.Generator().manual_seed(2))
    save_file(tensors, str(tmp_path / "m.safetensors"))
    src = formats.open(tmp_path / "m.safetensors")
    src.config = cfg
    meta = adapt(src, "meta", Options())
    assert meta.span("layers.0.attention.wv.weight") == src.span("model.layers.0.self_attn.v_proj.weight")
    assert meta.span("layers.0.attention.wq.weight") is None


def test_refusals_name_the_tensor_and_shapes():
    g = torch.Generator().manual_seed(3)
    tensors, cfg = _llama_hf(g)
    # a tensor that matches no rule of the source's layout
    src = DictSource(dict(tensors, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(6)}), cfg)
    with pytest.raises(LayoutError, match=r"q_norm.*fit no known layout|closest is llama-hf"):
        adapt(src, "meta", Options())
    # a shape that does not fit the config
    bad = dict(tensors)
    bad["model.layers.1.mlp.up_proj.weight"] = torch.randn(41, 24, generator=g)
    with pytest.raises(LayoutError, match=r"up_proj.*\[41, 24\].*\[40, 24\]"):
        adapt(DictSource(bad, cfg), "meta", Options())
    # rotary permutation without head counts
    with pytest.raises(LayoutError, match="--config"):
        adapt(DictSource(tensors, None), "meta", Options())
    # head counts that cannot split the rows
    with pytest.raises(LayoutError, match=r"q_proj.*\[24, 24\].*permute_rope_hf_to_meta\(n_heads=8\)"):
        adapt(DictSource(tensors, dict(cfg, num_attention_heads=8, num_key_value_heads=4, head_dim=3)), "meta", Options())
    with pytest.raises(LayoutError, match=r"q_proj.*\[24, 24\].*\[20, 24\]"):
        adapt(DictSource(tensors, dict(cfg, num_attention_heads=5, num_key_value_heads=1, head_dim=4)), "meta", Options())
    # the wrong family
    gpt2 = DictSource({"transformer.wte.weight": torch.zeros(5, 4)})
    with pytest.raises(LayoutError, match="gpt2.*llama"):
        adapt(gpt2, "meta", Options())
    with pytest.raises(LayoutError, match="unknown layout 'llama-gguf'"):
        adapt(src, "safetensors", Options(layout="llama-gguf"))


def test_a_name_matching_two_rules_is_refused():
    amb = Layout("llama-amb", "llama", (Rule("w.{bid}", "model.layers.{bid}.input_layernorm.weight"),
                                        Rule("w.{bid}", "model.layers.{bid}.post_attention_layernorm.weight")))
    src = DictSource({"w.0": torch.ones(3)})
    with pytest.raises(LayoutError, match=r"'w.0' matches two rules.*input_layernorm.*post_attention_layernorm"):
        LayoutSource(src, amb, LAYOUTS["llama-hf"], {})


def test_formats_choose_layouts():
    tensors, cfg = _llama_hf(torch.Generator().manual_seed(4))
    src = DictSource(tensors, cfg)
    assert adapt(src, "safetensors", Options()) is src          # other formats keep the layout
    assert adapt(src, "hf", Options()) is src                   # already the hub
    with pytest.raises(LayoutError, match="format meta holds layout llama-meta"):
        adapt(src, "meta", Options(layout="llama-hf"))
    zoo = DictSource({"conv.weight": torch.zeros(2, 3)})
    assert adapt(zoo, "hf", Options()) is zoo                   # unknown architectures pass through


# -- GPT-2 -------------------------------------------------------------------------------------------

def _gpt2_hf_dir(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=24, n_head=4, n_layer=2, n_positions=16, vocab_size=37, n_inner=40)).eval()
    model.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", model


def test_gpt2_hf_to_nanogpt_is_nn_linear_and_back_is_bit_exact(tmp_path):
    d, model = _gpt2_hf_dir(tmp_path)
    src = formats.open(d)
    assert detect_layout(src).id == "gpt2-hf"
    nano = adapt(src, "safetensors", Options(layout="gpt2-nanogpt"))
    transposed = sorted(n for n in nano.names() if nano.transforms_of(n))
    assert transposed == sorted(f"transformer.h.{i}.{w}.weight" for i in range(2)
                                for w in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    # nanoGPT's nn.Linear computes what HF's Conv1D computes
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    block = model.transformer.h[1]
    with torch.no_grad():
        for hf_mod, name in ((block.attn.c_attn, "attn.c_attn"), (block.mlp.c_fc, "mlp.c_fc"), (block.mlp.c_proj, "mlp.c_proj")):
            xin = x if name != "mlp.c_proj" else torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
            lin = torch.nn.functional.linear(xin, nano.read(f"transformer.h.1.{name}.weight"), nano.read(f"transformer.h.1.{name}.bias"))
            assert torch.allclose(lin, hf_mod(xin), atol=1e-6)
    # written, detected by orientation, and back
    out = tmp_path / "nano.safetensors"
    modelport.convert(d, out, options=Options(layout="gpt2-nanogpt"))
    back_src = formats.open(out)
    assert detect_layout(back_src).id == "gpt2-nanogpt"
    back = tmp_path / "back"
    modelport.convert(out, back, to="hf", options=Options(config=d / "config.json"))
    from safetensors.torch import load_file

    a, b = load_file(str(d / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert set(a) == set(b) and all(bitwise_equal(a[n], b[n]) for n in a)


def test_gpt2_nanogpt_drops_causal_mask_buffer():
    g = torch.Generator().manual_seed(5)
    t = {"transformer.h.0.mlp.c_fc.weight": torch.randn(40, 24, generator=g), "transformer.h.0.attn.bias": torch.ones(1, 1, 4, 4)}
    src = DictSource(t, {"n_embd": 24, "n_inner": 40})
    assert detect_layout(src).id == "gpt2-nanogpt"
    hub = adapt(src, "hf", Options())
    assert hub.names() == ["transformer.h.0.mlp.c_fc.weight"] and hub.info(hub.names()[0]).shape == (24, 40)
    assert any("attn.bias" in n for n in hub.notes)
    # what the manifest records, as the mapping decided it
    assert hub.applied == [{"op": "transpose", "tensor": "transformer.h.0.mlp.c_fc.weight"},
                           {"op": "drop", "tensor": "transformer.h.0.attn.bias", "why": "recomputed by the model"}]


def test_meta_config_from_params_file(tmp_path):
    """--config may be a Meta params.json when the weights come without one."""
    tensors, _ = _llama_hf(torch.Generator().manual_seed(6), dim=32, n_heads=4, n_kv=2, ffn=96, vocab=37)
    (tmp_path / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                      "vocab_size": 37, "multiple_of": 32, "norm_eps": 1e-5}))
    meta = adapt(DictSource(tensors), "meta", Options(config=tmp_path / "params.json"))
    assert meta.transforms_of("layers.0.attention.wk.weight") == ["permute_rope_hf_to_meta(n_heads=2)"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(n_heads=st.integers(1, 6), half=st.integers(1, 5), cols=st.integers(0, 4), name=st.sampled_from(sorted(ARGS)))
def test_transforms_invert_for_any_shape(n_heads, half, cols, name):
    rows = n_heads * 2 * half * (3 if "qkv" in name else 1)
    shape = (rows, cols) if cols or name == "transpose" else (rows,)
    x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    args = {} if name == "transpose" else {"n_heads": n_heads}
    t = transforms.get(name)
    y = np.ascontiguousarray(t.apply(x, **args))
    assert y.shape == transforms.out_shape(name, shape, args, "x")
    assert np.array_equal(transforms.get(t.inverse).apply(y, **args), x)
