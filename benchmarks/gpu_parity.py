"""Parity of Llama models in fp16 on a GPU: torch CUDA against torch CPU and against the ONNX export.

Two models, random weights built in-process from a seeded generator (no download):

    tiny   dim 64, 4 layers, 4 heads (2 kv), ffn 172, vocab 1000
    1b     Llama-3.2-1B-shaped: dim 2048, 16 layers, 32 heads (8 kv), ffn 8192, vocab 128256 (1.24 B parameters)

For each: the reference is torch on CUDA in fp16; the candidates are the same weights in torch on the
CPU (fp16) and the ONNX export (fp16, exported from the CUDA model) in onnxruntime with the CUDA
execution provider when that is installed, the CPU one otherwise (where the CPU provider cannot run an
fp16 graph, the export is made in fp32 and the report says so). It prints the verdict, the largest
logit error, each side's origin, device and the onnxruntime providers that really ran, the wall time
and the peak GPU memory, as one JSON line per model.

Usage (GPU machine):  python benchmarks/gpu_parity.py [--models tiny,1b] [--new-tokens 8] [--full]
(the 1B model gets seq 1 and 16 and at most 4 new tokens unless --full: its CPU side is slow in fp16)
Here, CPU only:       python benchmarks/gpu_parity.py --cpu --models tiny   (fp32 on the CPU: the same code path)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=172, vocab_size=1000),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256),
}


def build(name: str, device: str, dtype):
    """A reference Llama of the named shape, weights ~ N(0, 0.02) (norms 1) from a seeded generator."""
    import torch

    from modelport.models.config import config_from_hf
    from modelport.models.loader import build_model

    hf = dict(model_type="llama", max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
              tie_word_embeddings=False, **SHAPES[name])
    model = build_model(config_from_hf(hf, "llama"), device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    from modelport.models._common import Rotary

    for m in model.modules():
        if isinstance(m, Rotary):
            m.reset()
    return model.to(dtype).eval()


def runnable(model, origin, backend="torch"):
    from modelport.models.runnable import from_module

    r = from_module(model, kind="causal-lm", origin=origin, vocab_size=model.config.vocab_size)
    r.backend = backend
    return r


def export(model, path: Path, device: str):
    import torch

    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "logits")})
    return path


def ort_runnable(path: Path, device: str, vocab: int):
    from modelport.models.runnable import OrtRunnable, ort_session, token_inputs

    session, providers = ort_session(path, device)
    return OrtRunnable(kind="causal-lm", inputs=token_inputs(), outputs=("logits",),
                       origin="ONNX export in onnxruntime", path=path, device=",".join(providers), vocab_size=vocab,
                       module=session)


def check(name: str, device: str, dtype_name: str, new_tokens: int, seq_lens, workdir: Path) -> dict:
    import torch

    from modelport.parity import parity

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    t0 = time.perf_counter()
    cpu_model = build(name, "cpu", dtype)
    build_s = time.perf_counter() - t0
    ref_model = copy.deepcopy(cpu_model).to(device) if device != "cpu" else cpu_model
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ref = runnable(ref_model, f"modelport reference llama ({name}) on {device}")
    cands = [runnable(cpu_model, f"modelport reference llama ({name}) on cpu")] if device != "cpu" else []
    notes = []
    try:
        onnx_path = export(ref_model, workdir / f"{name}.onnx", device)
        cand = ort_runnable(onnx_path, device, ref_model.config.vocab_size)
        cand.run({"input_ids": torch.ones(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2, dtype=torch.long)})
    except Exception as exc:  # noqa: BLE001 (a benchmark reports what failed and goes on)
        notes.append(f"onnxruntime could not run the {dtype_name} export on {device} ({type(exc).__name__}: "
                     f"{str(exc)[:160]}); exported in fp32 instead")
        onnx_path = export(build(name, "cpu", torch.float32), workdir / f"{name}-fp32.onnx", "cpu")
        cand = ort_runnable(onnx_path, device, ref_model.config.vocab_size)
    cands.append(cand)
    t1 = time.perf_counter()
    report = parity(ref, *cands, device=device, seq_lens=seq_lens, new_tokens=new_tokens, dtype=None)
    wall = time.perf_counter() - t1
    out = {"model": name, "parameters": sum(p.numel() for p in cpu_model.parameters()), "dtype": dtype_name,
           "passed": report.passed, "parity_seconds": round(wall, 2), "build_seconds": round(build_s, 2),
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None,
           "onnxruntime_providers": report.providers(), "notes": notes, "candidates": []}
    for c in report.candidates:
        worst = max((t.max_abs for t in c.comparisons if t.max_abs is not None), default=None)
        out["candidates"].append({"origin": c.model["origin"], "device": c.model["device"],
                                  "providers": c.model.get("providers"), "passed": c.passed, "max_abs": worst,
                                  "tolerance": c.tolerance.describe(),
                                  "generation_first_difference": c.generation.first_difference if c.generation else None,
                                  "seconds": {k: round(v, 2) for k, v in c.seconds.items()},
                                  "first_divergence": c.first_divergence.to_json() if c.first_divergence else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,1b")
    ap.add_argument("--cpu", action="store_true", help="no GPU: reference and export on the CPU in fp32")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--seq-lens", default="1,16,64")
    ap.add_argument("--full", action="store_true", help="the 1B model on the same inputs as the tiny one")
    args = ap.parse_args()
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_parity: no CUDA device visible to torch; pass --cpu to run the CPU-only variant")
    dtype = "fp32" if args.cpu else "fp16"
    seq_lens = tuple(int(x) for x in args.seq_lens.split(","))
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            # the 1B model's CPU candidate computes in fp16 on the CPU, which is slow: shorter inputs there
            lens, new = ((1, 16), min(args.new_tokens, 4)) if name == "1b" and not args.full else (seq_lens, args.new_tokens)
            print(json.dumps(check(name, device, dtype, new, lens, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
