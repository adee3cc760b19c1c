"""Which family a checkpoint belongs to, and its config when no config.json came with it.

Detection reads, in order: the source's ``config.json`` (``architectures`` / ``model_type``), a
Meta ``params.json`` beside the weights, and the tensor names. Inference reads the dimensions that
shapes reveal (layers, widths, vocabulary, GQA ratio, biases, tying, GPT-2's position table) and fills
what they cannot (head count, norm epsilon, rope_theta, rotary fraction …) with the defaults stated in
:data:`ASSUMED_DEFAULTS`, listing those keys in the result's ``_modelport_assumed``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

from ..errors import FormatError, LayoutError
from ..formats.base import TensorSource
from .config import (GPT2Config, LlamaConfig, ModelConfig, NeoXConfig, config_from_hf, config_from_meta_params,
                     family_of_hf)

# A tensor name that only one family's layouts use -> that family. The base-model prefix is optional.
NAME_SIGNATURES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)h\.\d+\.attn\.c_attn\.weight$", "gpt2"),                     # gpt2-hf, gpt2-nanogpt
    (r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$", "llama"),          # llama-hf
    (r"^layers\.\d+\.attention\.wq\.weight$", "llama"),                   # llama-meta
    (r"(^|\.)layers\.\d+\.attention\.query_key_value\.weight$", "gptneox"),  # gptneox-hf
)

# Per family: the base-model prefix of the HF layout, and its tensor names (layer 0 stands for all).
PREFIX = {"gpt2": "transformer.", "llama": "model.", "gptneox": "gpt_neox."}

# Head sizes tried, in order, when only q/k widths are known: the sizes published checkpoints use.
HEAD_DIMS = (128, 64, 80, 96, 256, 32)

# What weights cannot reveal, and the value assumed for it (config.json keys).
ASSUMED_DEFAULTS = {
    "gpt2": {"layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"},
    "llama": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "hidden_act": "silu",
              "rope_scaling": None},
    "gptneox": {"layer_norm_eps": 1e-5, "rotary_emb_base": 10000.0, "rotary_pct": 0.25, "max_position_embeddings": 2048,
                "use_parallel_residual": True, "hidden_act": "gelu"},
}
# Llama 3's tokenizer has 128256 entries; with it, rope_theta 500000 is the better guess.
LLAMA3_VOCAB = 128256


def family_from_names(names) -> str | None:
    found = set()
    for name in names:
        for pattern, fam in NAME_SIGNATURES:
            if re.search(pattern, name):
                found.add(fam)
    # Names of two families (a merged or multi-model file) name none: the caller asks for --arch.
    return found.pop() if len(found) == 1 else None


def meta_params(source: TensorSource) -> dict | None:
    """The ``params.json`` of a Meta checkpoint: the source's own, or the file beside it."""
    params = getattr(source, "params", None)
    if isinstance(params, dict):
        return params
    path = Path(source.path)
    candidate = path / "params.json" if path.is_dir() else path.parent / "params.json"
    if candidate.is_file():
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError) as exc:
            raise FormatError(f"{candidate}: cannot read params.json ({exc})") from exc
    return None


def detect_family(source: TensorSource) -> str | None:
    """The family of ``source``: gpt2, llama or gptneox, or None when nothing names one."""
    if source.config is not None:
        fam = family_of_hf(source.config, f"{source.path}: config.json")
        if fam is not None:
            return fam
    names = list(source.names()) + list(source.aliases())
    fam = family_from_names(names)
    if fam is None and meta_params(source) is not None:
        return "llama"
    return fam


def config_for_source(source: TensorSource, arch: str | None = None) -> ModelConfig | None:
    """The model config for ``source``: config.json, else params.json, else inferred (see ``assumed``)."""
    if source.config is not None and (family_of_hf(source.config) is not None or arch):
        return config_from_hf(source.config, arch, f"{source.path}: config.json")
    params = meta_params(source)
    if params is not None and (arch in (None, "llama")):
        return config_from_meta_params(params, _vocab_rows(source), f"{source.path}: params.json")
    return infer_model_config(source, arch)


def _vocab_rows(source: TensorSource) -> int | None:
    for name in ("tok_embeddings.weight", "model.embed_tokens.weight", "embed_tokens.weight"):
        if name in source.names():
            return source.info(name).shape[0]
    return None


def infer_model_config(source: TensorSource, arch: str | None = None) -> ModelConfig | None:
    """A config from tensor names and shapes (HF layout), or None when the family is unknown."""
    fam = arch or family_from_names(list(source.names()) + list(source.aliases()))
    if fam is None:
        return None
    shapes = _shapes(source, PREFIX[fam])
    if fam == "gpt2":
        return _infer_gpt2(shapes, source)
    if fam == "llama":
        return _infer_llama(shapes, source)
    return _infer_neox(shapes, source)


def _shapes(source: TensorSource, prefix: str) -> dict[str, tuple[int, ...]]:
    """Shapes by name, the base-model prefix removed (lm_head / embed_out keep their names)."""
    out = {}
    aliases = source.aliases()
    for name in list(source.names()) + list(aliases):
        info = source.info(aliases.get(name, name))
        out[name[len(prefix):] if name.startswith(prefix) else name] = tuple(info.shape)
    return out


def _get(shapes: dict, name: str, source: TensorSource) -> tuple[int, ...]:
    if name not in shapes:
        raise LayoutError(f"{source.path}: no tensor {name!r}, which the architecture needs to infer its config")
    return shapes[name]


def _n_layers(shapes: dict, pattern: str) -> int:
    idx = {int(m.group(1)) for n in shapes if (m := re.match(pattern, n))}
    return max(idx) + 1 if idx else 0


def _head_dim(widths: list[int]) -> int:
    g = math.gcd(*widths)
    for hd in HEAD_DIMS:
        if g % hd == 0:
            return hd
    return g


def _infer_gpt2(shapes: dict, source: TensorSource) -> GPT2Config:
    vocab, dim = _get(shapes, "wte.weight", source)
    positions = _get(shapes, "wpe.weight", source)[0]
    c_attn = _get(shapes, "h.0.attn.c_attn.weight", source)
    if c_attn != (dim, 3 * dim):
        hint = " (nn.Linear orientation, as nanoGPT writes: convert with the gpt2-nanogpt layout)" if c_attn == (3 * dim, dim) else ""
        raise LayoutError(f"{source.path}: h.0.attn.c_attn.weight has shape {list(c_attn)}, GPT-2 needs {[dim, 3 * dim]}{hint}")
    ffn = _get(shapes, "h.0.mlp.c_fc.weight", source)[1]
    head_dim = 64 if dim % 64 == 0 else _head_dim([dim])
    d = ASSUMED_DEFAULTS["gpt2"]
    cfg = GPT2Config(n_layers=_n_layers(shapes, r"h\.(\d+)\."), n_heads=dim // head_dim, dim=dim, vocab_size=vocab,
                     ffn_dim=ffn, max_positions=positions, norm_eps=d["layer_norm_epsilon"],
                     activation=d["activation_function"], tie_word_embeddings="lm_head.weight" not in source.names())
    return replace(cfg, assumed=("n_head", *d))


def _infer_llama(shapes: dict, source: TensorSource) -> LlamaConfig:
    vocab, dim = _get(shapes, "embed_tokens.weight", source)
    q_rows = _get(shapes, "layers.0.self_attn.q_proj.weight", source)[0]
    k_rows = _get(shapes, "layers.0.self_attn.k_proj.weight", source)[0]
    ffn = _get(shapes, "layers.0.mlp.gate_proj.weight", source)[0]
    if q_rows % k_rows:
        raise LayoutError(f"{source.path}: q_proj has {q_rows} rows, not a multiple of k_proj's {k_rows}")
    head_dim = _head_dim([q_rows, k_rows])
    d = ASSUMED_DEFAULTS["llama"]
    theta = 500000.0 if vocab == LLAMA3_VOCAB else d["rope_theta"]
    cfg = LlamaConfig(n_layers=_n_layers(shapes, r"layers\.(\d+)\."), n_heads=q_rows // head_dim,
                      n_kv_heads=k_rows // head_dim, dim=dim, ffn_dim=ffn, vocab_size=vocab, head_dim=head_dim,
                      norm_eps=d["rms_norm_eps"], rope_theta=theta, max_positions=d["max_position_embeddings"],
                      tie_word_embeddings="lm_head.weight" not in source.names(),
                      attention_bias="layers.0.self_attn.q_proj.bias" in shapes,
                      mlp_bias="layers.0.mlp.gate_proj.bias" in shapes, activation=d["hidden_act"])
    return replace(cfg, assumed=("num_attention_heads", "num_key_value_heads", "head_dim", *d))


def _infer_neox(shapes: dict, source: TensorSource) -> NeoXConfig:
    vocab, dim = _get(shapes, "embed_in.weight", source)
    ffn = _get(shapes, "layers.0.mlp.dense_h_to_4h.weight", source)[0]
    head_dim = _head_dim([dim])
    d = ASSUMED_DEFAULTS["gptneox"]
    names = set(source.names())
    cfg = NeoXConfig(n_layers=_n_layers(shapes, r"layers\.(\d+)\."), n_heads=dim // head_dim, dim=dim, ffn_dim=ffn,
                     vocab_size=vocab, rotary_pct=d["rotary_pct"], rope_theta=d["rotary_emb_base"],
                     norm_eps=d["layer_norm_eps"], max_positions=d["max_position_embeddings"],
                     use_parallel_residual=d["use_parallel_residual"],
                     tie_word_embeddings=not ({"embed_out.weight", "lm_head.weight"} & names),
                     attention_bias="layers.0.attention.query_key_value.bias" in shapes, activation=d["hidden_act"])
    if cfg.rotary_dims % 2:
        cfg = replace(cfg, rotary_pct=1.0)
    return replace(cfg, assumed=("num_attention_heads", *d))
