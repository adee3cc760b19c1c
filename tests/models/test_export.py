"""Each reference model scripts, traces and exports to ONNX with the eager model's outputs."""

from __future__ import annotations

import warnings

import pytest
import torch

from . import tiny

# Every registered family, some in a variant that exercises more of its model.
VARIANTS = {"llama": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})}


@pytest.fixture(scope="module", params=tiny.families())
def model(request):
    seed = 11 + tiny.families().index(request.param)
    return tiny.ours_from_hf(tiny.build(request.param, seed=seed, **VARIANTS.get(request.param, {})))


def test_script_equals_eager(model):
    scripted = torch.jit.script(model)
    ids, mask = tiny.batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(scripted(ids, mask), model(ids, mask), rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted(ids), model(ids), rtol=0, atol=1e-6)


def test_trace_equals_eager_on_other_shapes(model):
    ids, mask = tiny.batch(seed=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (ids, mask))
        ids2, mask2 = tiny.batch(seed=4, b=2, t=6)      # shapes other than the traced ones
        torch.testing.assert_close(traced(ids2, mask2), model(ids2, mask2), rtol=0, atol=1e-6)


def test_onnx_runs_in_onnxruntime(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ids, mask = tiny.batch(seed=2)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "logits": {0: "batch", 1: "seq"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids2, mask2 = tiny.batch(seed=4, b=2, t=6)
    (got,) = session.run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})
    with torch.no_grad():
        want = model(ids2, mask2)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-5)
