"""Qwen2 (Qwen2ForCausalLM): Llama with biases on the q, k and v projections (none on o), tied or
untied embeddings, rope_theta 1e6 in the published models, and sliding-window keys in its config.

The reference model is Llama's (:mod:`modelport.models.llama`), built from :class:`Qwen2Config`,
whose ``qkv_bias`` / ``o_bias`` give the projections their biases. Sliding-window attention is not
implemented: a config that turns it on for any layer is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import UnsupportedError
from ..config_base import with_assumed_key
from ..family import Family, Weights, frozen
from . import llama


@dataclass(frozen=True)
class Qwen2Config(llama.LlamaConfig):
    norm_eps: float = 1e-6
    max_positions: int = 32768
    use_sliding_window: bool = False
    sliding_window: int | None = None        # window size, for layers from max_window_layers on (when used)
    max_window_layers: int = 28

    family = "qwen2"

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False

    def to_hf_config(self, spelling: int = 4) -> dict:
        out: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "hidden_size": self.dim, "intermediate_size": self.ffn_dim,
            "vocab_size": self.vocab_size, "head_dim": self.head_dim, "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_positions, "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.activation, "use_sliding_window": self.use_sliding_window,
            "sliding_window": self.sliding_window, "max_window_layers": self.max_window_layers,
        }
        llama.rope_entries(out, self.rope_theta, self.rope_scaling, spelling)
        return with_assumed_key(out, self.assumed)


ALIASES = {k: v for k, v in llama.ALIASES.items() if k not in ("attention_bias", "mlp_bias")}
ALIASES.update({"use_sliding_window": ("use_sliding_window",), "sliding_window": ("sliding_window",),
                "max_window_layers": ("max_window_layers",), "layer_types": ("layer_types",)})


def from_values(v: dict, where: str) -> Qwen2Config:
    layer_types = v.pop("layer_types", None) or ()
    if "sliding_attention" in layer_types or (v.get("use_sliding_window") and v.get("sliding_window")
                                              and v.get("max_window_layers", 28) < v.get("n_layers", 0)):
        raise UnsupportedError(f"{where}: sliding-window attention is not supported for qwen2; "
                               "set use_sliding_window to false if the model was trained without it")
    return llama.from_values(v, where, config_class=Qwen2Config)


ASSUMED = {**llama.ASSUMED, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
           "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28}


def infer(w: Weights) -> Qwen2Config:
    return llama.infer(w, config_class=Qwen2Config, assumed=ASSUMED)


HUB_SHAPES = {**llama.HUB_SHAPES,
              "model.layers.{bid}.self_attn.q_proj.bias": ("q_dim",),
              "model.layers.{bid}.self_attn.k_proj.bias": ("kv_dim",),
              "model.layers.{bid}.self_attn.v_proj.bias": ("kv_dim",)}

FAMILY = Family(
    id="qwen2",
    model="modelport.models.llama:LlamaForCausalLM",
    config=Qwen2Config,
    aliases=frozen(ALIASES),
    from_values=from_values,
    dims=llama.dims,
    infer=infer,
    model_types=("qwen2",),
    architectures=("Qwen2ForCausalLM", "Qwen2Model"),
    prefix="model.",
    # Llama's names with q/k/v biases and no o bias (a Llama with attention_bias has both)
    signatures=(r"(^|\.)layers\.\d+\.self_attn\.q_proj\.bias$",),
    anti_signatures=(r"(^|\.)layers\.\d+\.self_attn\.o_proj\.bias$",),
    refines="llama",
    hub_shapes=frozen(HUB_SHAPES),
    tied=llama.FAMILY.tied,
    hub_dropped=llama.FAMILY.hub_dropped,
    derived_buffers=llama.FAMILY.derived_buffers,
    rotary_rows=llama.FAMILY.rotary_rows,
    assumed_defaults=frozen(ASSUMED),
)
