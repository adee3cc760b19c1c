"""Parity's cost against the work it cannot avoid, for a GPT-2-small-shaped model on the CPU.

Builds a GPT-2-small-shaped HF directory (12 layers, dim 768, 12 heads, vocab 50257, 1024 positions;
random fp32 weights from a seeded generator, 124 M parameters, 498 MB) and two candidates: a
safetensors copy and the ONNX export (torch.onnx, run by onnxruntime's CPU provider). For each pair it
times

    bare    load both models, then run both on exactly the forwards parity runs (the seeded input sets
            and the growing sequences of greedy generation), nothing compared
    parity  modelport.parity(...) end to end: loading, the same forwards, every metric, the report

and prints both and their ratio (target: parity <= 1.5 x bare). Each figure is the best of --repeat runs.

Usage: python benchmarks/bench_parity.py [--new-tokens 16] [--repeat 2] [--threads N] [--candidates copy,onnx]
       [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HF = dict(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, n_inner=None,
          layer_norm_epsilon=1e-5, activation_function="gelu_new", tie_word_embeddings=True)


def build_dir(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from modelport.models.config import config_from_hf
    from modelport.models.loader import build_model

    cfg = config_from_hf(HF, "gpt2")
    model = build_model(cfg, device="cpu")
    gen = torch.Generator().manual_seed(0)
    state = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            state[name] = p.detach().clone()
    path.mkdir(parents=True)
    save_file(state, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    return path


def export_onnx(ref_dir: Path, out: Path) -> Path:
    import torch

    from modelport.models.runnable import load_runnable

    model = load_runnable(ref_dir).module
    ids = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(out), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "logits")})
    return out


def load(path: Path):
    """A path as a runnable: the modelport loader, or an onnxruntime session for .onnx."""
    from modelport.models.runnable import OrtRunnable, load_runnable, ort_session, token_inputs

    if path.suffix == ".onnx":
        session, providers = ort_session(path)
        return OrtRunnable(kind="causal-lm", inputs=token_inputs(), outputs=("logits",), origin="ONNX export",
                           path=path, device=",".join(providers), vocab_size=50257, module=session)
    return load_runnable(path, config=path.parent / "gpt2-small" / "config.json")   # bare weights: the reference's


def bare(ref_path: Path, cand_path: Path, new_tokens: int) -> float:
    """Load both and run both on the forwards parity runs; nothing compared."""
    from modelport.parity.inputs import input_sets
    from modelport.parity.metrics import greedy

    from modelport.models.runnable import load_runnable

    start = time.perf_counter()
    models = [load_runnable(ref_path, engine="transformers"), load(cand_path)]   # the reference as parity runs it
    sets = input_sets(models[0], reserve=new_tokens)
    gen = next(s for s in sets if s.seq_len > 1)
    for m in models:
        for s in sets:
            m.run(s.feeds)
        greedy(m, gen.feeds, new_tokens)
    return time.perf_counter() - start


def with_parity(ref_path: Path, cand_path: Path, new_tokens: int) -> tuple[float, bool]:
    """parity on the paths, as the command runs it: the reference released before the candidate loads."""
    from modelport.parity import parity

    start = time.perf_counter()
    report = parity(ref_path, cand_path, new_tokens=new_tokens)     # the bare copy borrows the config
    return time.perf_counter() - start, report.passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--candidates", default="copy,onnx", help="which candidates: copy, onnx (comma-separated)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        ref = build_dir(tmp / "gpt2-small")
        import shutil

        wanted = args.candidates.split(",")
        cands = {}
        if "copy" in wanted:
            shutil.copy(ref / "model.safetensors", tmp / "copy.safetensors")
            cands["safetensors copy"] = tmp / "copy.safetensors"
        if "onnx" in wanted:
            cands["ONNX export (onnxruntime CPU)"] = export_onnx(ref, tmp / "gpt2-small.onnx")
        print(f"GPT-2-small shape, random fp32 weights; torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"inputs: seq 1, 8, 32 at batch 2 (last row left-padded) + {args.new_tokens} greedy tokens")
        for label, cand in cands.items():
            b = min(bare(ref, cand, args.new_tokens) for _ in range(args.repeat))
            runs = [with_parity(ref, cand, args.new_tokens) for _ in range(args.repeat)]
            p = min(t for t, _ in runs)
            print(f"{label:<32} bare load+forward {b:7.2f} s   parity {p:7.2f} s   ratio {p / b:5.2f}x   "
                  f"verdict {'PASS' if all(ok for _, ok in runs) else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main()
