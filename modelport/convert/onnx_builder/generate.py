"""Greedy generation with a built graph's key/value cache in onnxruntime: the prompt once, then one
token per step with the previous step's ``present`` fed back as ``past_key_values``."""

from __future__ import annotations

import numpy as np


def greedy(session, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """``new_tokens`` greedy tokens after each (left-padded) prompt row: (batch, new_tokens) int64.

    ``session`` is an onnxruntime InferenceSession of a graph with a cache (inputs input_ids,
    attention_mask, position_ids, past_key_values.N.key/value)."""
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = ["logits"] + [n.replace("past_key_values.", "present.") for n in past_names]
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.int64)
    b = ids.shape[0]
    dtype = np.float16 if inputs[past_names[0]].type == "tensor(float16)" else np.float32
    past = {n: np.zeros((b, inputs[n].shape[1], 0, inputs[n].shape[3]), dtype=dtype) for n in past_names}
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    out = []
    for _ in range(new_tokens):
        values = session.run(outputs, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        nxt = values[0][:, -1, :].argmax(-1).astype(np.int64)                       # (B,)
        out.append(nxt)
        past = dict(zip(past_names, values[1:]))
        ids = nxt[:, None]
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
    return np.stack(out, axis=1)
