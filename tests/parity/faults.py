"""Tiny checkpoints on disk, correct or with one planted fault, for the parity tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.models import tiny


def write_dir(path: Path, state: dict, config: dict) -> Path:
    """An HF-style directory: model.safetensors and config.json."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config))
    return path


def llama_state(seed: int = 0):
    hf = tiny.llama(seed=seed)
    return dict(tiny.hf_state_dict(hf)), hf.config.to_dict()


def gpt2_state(seed: int = 0):
    hf = tiny.gpt2(seed=seed)
    return dict(tiny.hf_state_dict(hf)), hf.config.to_dict()


def rotary_meta_order(state: dict, layer: int, config: dict) -> dict:
    """q/k rows of one layer left in Meta's interleaved rotary order (the permute not applied)."""
    from modelport.models.transforms import permute_rope_hf_to_meta

    out = dict(state)
    p = f"model.layers.{layer}.self_attn."
    out[p + "q_proj.weight"] = permute_rope_hf_to_meta(state[p + "q_proj.weight"], config["num_attention_heads"])
    out[p + "k_proj.weight"] = permute_rope_hf_to_meta(state[p + "k_proj.weight"], config["num_key_value_heads"])
    return out


def conv1d_untransposed(state: dict, layer: int) -> dict:
    """A GPT-2 Conv1D weight of one layer stored as a Linear's (square, so the shape still fits)."""
    out = dict(state)
    name = f"transformer.h.{layer}.attn.c_proj.weight"
    out[name] = state[name].t()
    return out


def swap_layers(state: dict, a: int, b: int, prefix: str = "model.layers.") -> dict:
    out = dict(state)
    for name, t in state.items():
        for x, y in ((a, b), (b, a)):
            if name.startswith(f"{prefix}{x}."):
                out[name.replace(f"{prefix}{x}.", f"{prefix}{y}.", 1)] = t
    return out


def shard_merged_on_wrong_axis(state: dict, layer: int, shards: int = 2) -> dict:
    """A column-parallel Meta weight (w1 = gate_proj, split on dim 0) merged along dim 1, then viewed
    back to the expected shape."""
    out = dict(state)
    name = f"model.layers.{layer}.mlp.gate_proj.weight"
    parts = torch.chunk(state[name], shards, dim=0)
    out[name] = torch.cat(parts, dim=1).reshape(state[name].shape)
    return out


def fp16_overflow(state: dict, layer: int, factor: float = 1e6) -> dict:
    """One layer's MLP output far beyond fp16's range (65504), finite in fp32."""
    out = dict(state)
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    out[name] = state[name] * factor
    return out


def export_onnx(model, path):
    import warnings

    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "logits")})
    return path


def ort_runnable(model, path, external_data: bool = False):
    """The model exported to ONNX at ``path`` (its weights in a side file if asked) and run by onnxruntime."""
    from modelport.models.runnable import CAUSAL_LM, OrtRunnable, ort_session, token_inputs

    export_onnx(model, path)
    if external_data:
        import onnx

        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, location=path.name + ".data",
                  size_threshold=0)
    session, providers = ort_session(path)
    return OrtRunnable(kind=CAUSAL_LM, inputs=token_inputs(), outputs=("logits",), origin="onnx export", path=path,
                       device="cpu", vocab_size=model.config.vocab_size, module=session)


def script_runnable(model):
    """The model scripted, behind the runnable interface as a TorchScript file's producer gives it."""
    from modelport.models.runnable import CAUSAL_LM, TorchRunnable, token_inputs

    return TorchRunnable(kind=CAUSAL_LM, inputs=token_inputs(), outputs=("logits",), origin="torchscript",
                         backend="torchscript", vocab_size=model.config.vocab_size, module=torch.jit.script(model))


# The faults a conversion makes (issue list), each in one place of a tiny Llama (3 layers, 4 q heads of 6,
# 2 kv heads) or GPT-2; each returns the changed state (or config) and the layer it is planted in.

def gate_up_swapped(state: dict, layer: int) -> dict:
    out = dict(state)
    p = f"model.layers.{layer}.mlp."
    out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = state[p + "up_proj.weight"], state[p + "gate_proj.weight"]
    return out


def square_transposed(state: dict, layer: int) -> dict:
    out = dict(state)
    name = f"model.layers.{layer}.self_attn.o_proj.weight"
    out[name] = state[name].t().contiguous()
    return out


def one_head_meta_order(state: dict, layer: int, head: int = 1, head_dim: int = 6) -> dict:
    """One q head's rows left in Meta's interleaved rotary order."""
    from modelport.models.transforms import permute_rope_hf_to_meta

    out = dict(state)
    name = f"model.layers.{layer}.self_attn.q_proj.weight"
    w = state[name].clone()
    rows = slice(head * head_dim, (head + 1) * head_dim)
    w[rows] = permute_rope_hf_to_meta(state[name][rows], 1)
    out[name] = w
    return out


def kv_heads_swapped(state: dict, layer: int, head_dim: int = 6) -> dict:
    out = dict(state)
    for proj in ("k_proj", "v_proj"):
        name = f"model.layers.{layer}.self_attn.{proj}.weight"
        w = state[name]
        out[name] = torch.cat([w[head_dim:2 * head_dim], w[:head_dim], w[2 * head_dim:]])
    return out


def norm_ones(state: dict, layer: int) -> dict:
    out = dict(state)
    name = f"model.layers.{layer}.post_attention_layernorm.weight"
    out[name] = torch.ones_like(state[name])
    return out


def scaled(state: dict, name: str, factor: float = 1.001) -> dict:
    out = dict(state)
    out[name] = state[name] * factor
    return out


def embedding_rows_zeroed(state: dict, rows) -> dict:
    out = dict(state)
    w = state["model.embed_tokens.weight"].clone()
    w[list(rows)] = 0
    out["model.embed_tokens.weight"] = w
    return out
