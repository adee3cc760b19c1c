"""convert --verify: the written model is checked against its source before it is kept."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.convert import VerifyFailed
from tests.parity import faults
from tests.parity.conftest import one_thread  # noqa: F401  (autouse: tiny models on one thread)


@pytest.fixture
def src(tmp_path):
    state, config = faults.llama_state(seed=41)
    return faults.write_dir(tmp_path / "src", state, config), state, config


def test_verified_conversions_keep_their_report(src, tmp_path):
    path, _, _ = src
    fast = {"seq_lens": (1, 6), "new_tokens": 2}
    r = modelport.convert(path, tmp_path / "w.safetensors", verify=fast)
    assert r.parity and r.parity.candidates[0].tolerance.dtype == "float32"
    r = modelport.convert(path, tmp_path / "meta", to="meta", verify=fast)      # rotary permute and back
    assert r.parity and (tmp_path / "meta").is_dir()
    r = modelport.convert(path, tmp_path / "h.safetensors", dtype="fp16", verify=fast)
    assert r.parity and r.parity.candidates[0].tolerance.dtype == "float16"


def test_failed_verify_keeps_nothing(src, tmp_path):
    path, _, _ = src
    dst = tmp_path / "h.safetensors"
    with pytest.raises(VerifyFailed, match="does not match the source") as exc:
        modelport.convert(path, dst, dtype="fp16", verify={"atol": 1e-7, "rtol": 0.0, "seq_lens": (4,),
                                                            "new_tokens": 0})
    assert not exc.value.report and exc.value.exit_code == 1
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_verify_refuses_an_overflowing_fp16_copy(cli, tmp_path):
    state, config = faults.llama_state(seed=42)
    path = faults.write_dir(tmp_path / "src", faults.fp16_overflow(state, 1), config)
    dst = tmp_path / "out"
    r = cli("convert", path, dst, "--to", "hf", "--dtype", "fp16", "--allow-overflow", "--verify")
    assert r.returncode == 1, r.stderr
    assert "first divergence: layer 1" in r.stdout and "NaN/Inf" in r.stdout
    assert "nothing was written" in r.stderr and not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    ok = cli("convert", path, tmp_path / "ok.safetensors", "--verify")
    assert ok.returncode == 0, ok.stderr
    assert "verified: matches" in ok.stdout and (tmp_path / "ok.safetensors").exists()


def test_verify_needs_a_runnable_source(tmp_path):
    from safetensors.torch import save_file

    from modelport.errors import ModelportError

    save_file({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelportError):
        modelport.convert(tmp_path / "w.safetensors", tmp_path / "o.safetensors", verify=True)
    assert not (tmp_path / "o.safetensors").exists()


def test_verified_export_and_a_failed_one_removed(src, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    path, _, _ = src
    r = modelport.convert(path, tmp_path / "m.onnx", verify={"seq_lens": (1, 5), "new_tokens": 2})
    assert r.parity and r.parity.candidates[0].model["backend"] == "onnxruntime"
    with pytest.raises(VerifyFailed):
        modelport.convert(path, tmp_path / "n.onnx", verify={"atol": 0.0, "rtol": 0.0, "seq_lens": (5,),
                                                            "new_tokens": 0})
    assert not (tmp_path / "n.onnx").exists() and not (tmp_path / "n.onnx.data").exists()


@pytest.fixture
def loads(monkeypatch):
    """Every model load, with how many models loaded before it were still alive at that moment."""
    import gc
    import weakref

    from modelport.models import runnable

    real, alive, counts = runnable.load_runnable, [], []

    def counting(path, spec=None, **kwargs):
        gc.collect()
        counts.append(sum(ref() is not None for ref in alive))
        r = real(path, spec, **kwargs)
        alive.append(weakref.ref(r.module))
        return r

    monkeypatch.setattr(runnable, "load_runnable", counting)
    return counts


def test_verify_holds_one_model_at_a_time(src, tmp_path, loads):
    """The check loads the source and the written model in turn, so a model never sits beside another; weights of a
    built-in family are checked before anything is written without building the model (no third load)."""
    path, state, config = src
    r = modelport.convert(path, tmp_path / "w.safetensors", verify={"seq_lens": (1, 6), "new_tokens": 2})
    assert r.parity and loads == [0, 0]
    assert r.parity.reference["made_by"] == "transformers"          # as `modelport parity` runs an HF directory
    loads.clear()
    r = modelport.convert(tmp_path / "w.safetensors", tmp_path / "w.pt", options=modelport.Options(config=path /
                          "config.json"), verify={"seq_lens": (1, 6), "new_tokens": 2})
    assert r.parity and loads == [0, 0]


def test_verify_refuses_weights_that_cannot_run_before_writing(src, tmp_path, loads):
    """Weights whose config contradicts their tensors are refused before anything is written or loaded."""
    import json

    path, state, config = src
    weights = tmp_path / "w.safetensors"
    assert modelport.convert(path, weights, manifest=False).dst == weights
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**json.loads((path / "config.json").read_text()),
                                 "hidden_size": config["hidden_size"] * 2}))
    with pytest.raises(modelport.ModelportError):
        modelport.convert(weights, tmp_path / "w.pt", options=modelport.Options(config=wrong), verify=True)
    assert loads == [] and not (tmp_path / "w.pt").exists()
