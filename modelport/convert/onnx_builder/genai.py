"""``genai_config.json``: what onnxruntime-genai needs beside a built graph to run it (its model type,
the graph's input and output names, head counts, token ids, and greedy search by default)."""

from __future__ import annotations

# onnxruntime-genai model types. GPT-2 and GPT-NeoX run as "llama": genai 0.18's "gpt2" type expects
# something else of the graph (it stops with "Model input was not found"); its llama type is the plain decoder
# with these input and output names (tests/convert/test_onnx_builder.py runs all four)
GENAI_TYPE = {"llama": "llama", "qwen2": "qwen2", "gpt2": "llama", "gptneox": "llama"}


def _token(config: dict | None, key: str, default: int = 0):
    value = (config or {}).get(key)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return value if len(value) > 1 else value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def genai_config(cfg, filename: str, config: dict | None) -> dict:
    """The config for the graph ``filename`` built from ``cfg`` (``config``: the source's config.json, for token ids)."""
    eos = _token(config, "eos_token_id")
    context = int(getattr(cfg, "max_positions", 2048))
    return {
        "model": {
            "bos_token_id": _token(config, "bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": cfg.head_dim,
                "hidden_size": cfg.dim,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": cfg.n_heads,
                "num_hidden_layers": cfg.n_layers,
                "num_key_value_heads": cfg.n_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": _token(config, "pad_token_id", eos if isinstance(eos, int) else 0),
            "type": GENAI_TYPE[cfg.family],
            "vocab_size": cfg.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
