"""The CUDA path: torch on the GPU against the CPU, and onnxruntime's CUDA provider where installed."""

from __future__ import annotations

import pytest
import torch

from modelport.models.runnable import load_runnable
from modelport.parity import parity

from . import faults

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is false)")]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    state, config = faults.llama_state(seed=51)
    return faults.write_dir(tmp_path_factory.mktemp("gpu") / "ref", state, config)


def test_cuda_against_cpu_in_fp16(ref):
    gpu = load_runnable(ref, device="cuda", dtype="float16")
    cpu = load_runnable(ref, device="cpu", dtype="float16")
    report = parity(gpu, cpu, device="cuda", seq_lens=(1, 8, 32), new_tokens=8)
    assert report, report.to_text()
    assert report.torch_device == "cuda" and gpu.device.startswith("cuda") and report.peak_gpu_bytes > 0


def test_paths_load_on_the_gpu_and_a_fault_is_located(ref, tmp_path):
    state, config = faults.llama_state(seed=51)
    bad = faults.write_dir(tmp_path / "bad", faults.swap_layers(state, 0, 1), config)
    report = parity(ref, bad, device="cuda", seq_lens=(6,), new_tokens=2)
    assert not report and report.candidates[0].first_divergence.layer == 0
    assert report.reference["device"].startswith("cuda")


def test_onnxruntime_cuda_provider_when_installed(ref, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider here (install onnxruntime-gpu)")
    from modelport.models.runnable import OrtRunnable, ort_session, token_inputs

    gpu = load_runnable(ref, device="cuda")
    path = faults.export_onnx(gpu.module, tmp_path / "m.onnx")
    session, providers = ort_session(path, "cuda")
    cand = OrtRunnable(kind="causal-lm", inputs=token_inputs(), outputs=("logits",), origin="onnx", path=path,
                       device=",".join(providers), vocab_size=gpu.vocab_size, module=session)
    report = parity(gpu, cand, device="cuda", seq_lens=(1, 8), new_tokens=4)
    assert report, report.to_text()
    assert providers[0] == "CUDAExecutionProvider" and "CUDAExecutionProvider" in report.providers()
