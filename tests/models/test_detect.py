"""Family detection and config inference from config.json, params.json and bare tensor names/shapes."""

from __future__ import annotations

import json

import pytest

from modelport import formats
from modelport.errors import LayoutError
from modelport.formats.memory import StateDictSource
from modelport.models import detect_arch, infer_config
from modelport.models.config import ASSUMED_KEY, config_from_hf

from . import tiny


def ShapeSource(shapes: dict, path="mem", params=None):
    """Names and shapes only (meta-device tensors): enough for detection and inference, never read."""
    import torch

    source = StateDictSource({n: torch.empty(s, dtype=torch.float16, device="meta") for n, s in shapes.items()}, path)
    if params is not None:
        source.native_config = ("params.json", params)
    return source


def save_bare(state: dict, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return formats.open(path)


def test_every_registered_family_has_a_tiny_model():
    assert set(tiny.BUILDERS) == set(tiny.families())


@pytest.mark.parametrize("family", tiny.families())
def test_detect_from_config_json(family, tmp_path):
    tiny.build(family).save_pretrained(tmp_path)
    with formats.open(tmp_path) as source:
        assert detect_arch(source) == family


@pytest.mark.parametrize("family", tiny.families())
def test_detect_from_tensor_names(family, tmp_path):
    with save_bare(tiny.hf_state_dict(tiny.build(family)), tmp_path / "w.safetensors") as source:
        assert source.config is None
        assert detect_arch(source) == family


def test_detect_meta_layouts():
    assert detect_arch(ShapeSource({"tok_embeddings.weight": (37, 24), "layers.0.attention.wq.weight": (24, 24)})) == "llama"
    assert detect_arch(ShapeSource({"weird.weight": (3,)}, params={"dim": 24})) == "llama"
    assert detect_arch(ShapeSource({"encoder.layer.0.attention.self.query.weight": (8, 8)})) is None
    assert infer_config(ShapeSource({"encoder.layer.0.attention.self.query.weight": (8, 8)})) is None
    mixed = {"transformer.h.0.attn.c_attn.weight": (24, 72), "model.layers.0.self_attn.q_proj.weight": (24, 24)}
    assert detect_arch(ShapeSource(mixed)) is None          # two families' names: ask for --arch


@pytest.mark.parametrize("family", tiny.families())
def test_infer_config_from_bare_state_dict(family, tmp_path):
    from modelport.models.families import get

    hf_model = tiny.build(family)
    want = config_from_hf(hf_model.config.to_dict())
    aliases = get(family).aliases          # head counts and sizes, as the family's config.json spells them
    true_heads = {aliases[f][0]: getattr(want, f) for f in ("n_heads", "n_kv_heads", "head_dim") if f in aliases}
    state = tiny.hf_state_dict(hf_model)
    if family == "gpt2":
        del state["lm_head.weight"]           # tied GPT-2 as published: no lm_head in the file
    with save_bare(state, tmp_path / "w.safetensors") as source:
        inferred = infer_config(source, assume_config=True)
    assumed = inferred.pop(ASSUMED_KEY)
    assert set(true_heads) <= set(assumed)    # head counts cannot be read from shapes: stated as assumed
    got = config_from_hf(inferred)
    for field in ("n_layers", "dim", "ffn_dim", "vocab_size", "tie_word_embeddings"):
        assert getattr(got, field) == getattr(want, field), field
    if family == "gpt2":
        assert got.max_positions == 20 and got.tie_word_embeddings
    # with the head counts (and the defaults the test model does not share) set right, the
    # inferred config runs the weights exactly as transformers does
    fixed = config_from_hf({**inferred, **true_heads, **_true_defaults(hf_model.config.to_dict(), assumed)})
    assert fixed == want


def _true_defaults(raw: dict, assumed: list) -> dict:
    cfg = config_from_hf(raw).to_hf_config()
    return {k: cfg[k] for k in assumed if k in cfg}


def test_infer_guesses_published_head_sizes():
    shapes = {"model.embed_tokens.weight": (128256, 4096), "lm_head.weight": (128256, 4096),
              "model.norm.weight": (4096,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (4096, 4096), p + "self_attn.k_proj.weight": (1024, 4096),
                       p + "self_attn.v_proj.weight": (1024, 4096), p + "self_attn.o_proj.weight": (4096, 4096),
                       p + "mlp.gate_proj.weight": (14336, 4096), p + "mlp.up_proj.weight": (14336, 4096),
                       p + "mlp.down_proj.weight": (4096, 14336), p + "input_layernorm.weight": (4096,),
                       p + "post_attention_layernorm.weight": (4096,)})
    cfg = infer_config(ShapeSource(shapes), assume_config=True)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (32, 8, 128)
    assert cfg["rope_theta"] == 500000.0 and not cfg["tie_word_embeddings"]   # Llama 3 vocabulary
    assert {"rope_theta", "rms_norm_eps", "max_position_embeddings"} <= set(cfg[ASSUMED_KEY])


def test_infer_refuses_nanogpt_orientation():
    sd = {k: tuple(v.shape) for k, v in tiny.gpt2().state_dict().items()}
    sd["transformer.h.0.attn.c_attn.weight"] = (72, 24)
    with pytest.raises(LayoutError, match="nanoGPT"):
        infer_config(ShapeSource(sd), assume_config=True)


def test_infer_checks_every_shape():
    sd = {k: tuple(v.shape) for k, v in tiny.llama().state_dict().items()}
    sd["model.layers.2.mlp.up_proj.weight"] = (41, 24)
    with pytest.raises(LayoutError, match=r"model.layers.2.mlp.up_proj.weight' has shape \[41, 24\]"):
        infer_config(ShapeSource(sd), assume_config=True)
    del sd["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(LayoutError, match="missing 1: model.layers.2.mlp.up_proj.weight"):
        infer_config(ShapeSource(sd), assume_config=True)


def test_params_json_beside_the_weights(tmp_path):
    params = {"dim": 24, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 37, "multiple_of": 8,
              "norm_eps": 1e-5, "rope_theta": 500.0}
    (tmp_path / "params.json").write_text(json.dumps(params))
    from modelport.models.detect import config_for_source

    cfg = config_for_source(ShapeSource({"tok_embeddings.weight": (37, 24)}, path=tmp_path / "consolidated.00.pth"))
    assert (cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == (2, 64, 37)


def test_each_family_record_says_where_its_blocks_are():
    from modelport.models.families import all_families

    assert {f.id: f.blocks for f in all_families()} == {
        "gpt2": "transformer.h", "llama": "model.layers", "gptneox": "gpt_neox.layers", "qwen2": "model.layers"}


def test_opening_detecting_and_converting_name_no_family():
    """A layout's own config file (Meta's params.json) is reached through the layout's codec: the modules that
    open, detect and convert import no family record by name."""
    import ast
    from pathlib import Path

    from modelport.models import families

    root = Path(__file__).resolve().parents[2] / "modelport"
    records = {f"families.{fid}" for fid in families.ids()} | {f"families.{m}" for m in families._MODULES}
    for rel in ("models/sources.py", "models/detect.py", "convert/__init__.py"):
        tree = ast.parse((root / rel).read_text())
        named = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                named |= {f"{node.module}.{a.name}" for a in node.names} | {node.module or ""}
            elif isinstance(node, ast.Import):
                named |= {a.name for a in node.names}
        assert not {n for n in named if any(n.endswith(r) for r in records)}, rel
