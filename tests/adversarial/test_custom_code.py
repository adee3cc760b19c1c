"""A model directory whose configs name custom code (``auto_map``) runs nothing and asks nothing: parity
--prompts used to reach transformers' "Do you wish to run the custom code? [y/N]" prompt, and ``y`` ran it.

The payload is written by hand (JSON, a vocabulary, safetensors bytes), so this process imports neither
torch nor transformers: the measured child processes of the other adversarial tests stay small."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT
from .hostile import write_safetensors

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat"]
DIM, FFN, N_VOCAB, HEAD_DIM = 8, 12, 16, 4
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM, "intermediate_size": FFN,
          "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": N_VOCAB,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "hidden_act": "silu", "torch_dtype": "float32"}


def _llama_safetensors(path: Path, seed: int) -> None:
    """One llama layer (GQA 2/1 heads) in float32, values from a seeded generator."""
    p = "model.layers.0."
    shapes = {"model.embed_tokens.weight": [N_VOCAB, DIM], p + "input_layernorm.weight": [DIM],
              p + "self_attn.q_proj.weight": [DIM, DIM], p + "self_attn.k_proj.weight": [HEAD_DIM, DIM],
              p + "self_attn.v_proj.weight": [HEAD_DIM, DIM], p + "self_attn.o_proj.weight": [DIM, DIM],
              p + "post_attention_layernorm.weight": [DIM], p + "mlp.gate_proj.weight": [FFN, DIM],
              p + "mlp.up_proj.weight": [FFN, DIM], p + "mlp.down_proj.weight": [DIM, FFN],
              "model.norm.weight": [DIM], "lm_head.weight": [N_VOCAB, DIM]}
    rng, header, data = random.Random(seed), {}, b""
    for name, shape in shapes.items():
        n = shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * n]}
        data += struct.pack(f"<{n}f", *(rng.gauss(0, 0.3) for _ in range(n)))
    write_safetensors(path, header, data)


def planted(tmp_path: Path, where: str) -> tuple[Path, Path, Path]:
    """A tiny llama directory with a BERT vocabulary whose ``auto_map`` (in ``where``) names
    ``tokenization_evil.EvilTokenizer``; importing that module leaves a marker file."""
    model = tmp_path / "model"
    model.mkdir()
    _llama_safetensors(model / "model.safetensors", seed=41)
    (model / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    marker = tmp_path / "ran"
    (model / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('custom code ran')\n"
        "from transformers import BertTokenizer as EvilTokenizer\n")
    auto_map = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    tokenizer = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}
    config = dict(CONFIG)
    if where == "tokenizer_config.json":
        tokenizer.update(tokenizer_class="EvilTokenizer", auto_map=auto_map)   # no built-in class: transformers would ask
    else:
        config["auto_map"] = auto_map
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (model / "config.json").write_text(json.dumps(config))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\n")
    return model, prompts, marker


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
@pytest.mark.parametrize("where, engine", [("tokenizer_config.json", "reference"), ("config.json", "transformers")])
def test_parity_prompts_refuse_custom_tokenizer_code_without_asking(tmp_path, where, engine):
    model, prompts, marker = planted(tmp_path, where)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "modelport", "parity", str(model), str(model), "--prompts", str(prompts),
                        "--new-tokens", "0", "--engine", engine],
                       input="y\ny\ny\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert where in r.stderr and "auto_map" in r.stderr and "custom code" in r.stderr
    assert "[y/N]" not in r.stdout + r.stderr
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()        # nothing copied into transformers' module cache either
