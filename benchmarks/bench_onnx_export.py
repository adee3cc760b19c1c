"""ONNX export of a GPT-2-small-shaped model: modelport against optimum-cli, side by side in one run.

Builds a GPT-2-small-shaped Hugging Face directory (124M parameters, fp32 random weights from a seeded
generator, tied embedding, safetensors) and exports it to ONNX opset 17 twice, each in its own process:

    modelport   python -m modelport convert DIR out.onnx --opset 17   (its own check included: opset,
                onnx.checker by path, the graph in onnxruntime against eager at a second shape)
    optimum     optimum-cli export onnx --model DIR --task text-generation --opset 17 --no-post-process
                from its own virtual environment (it pins its own transformers)

For each: wall time, peak RSS (VmHWM of the process, file-backed pages included; children included for
optimum, which runs one process), the size of what it wrote, and whether the tied embedding is stored
once (the number of initializers shaped like the embedding).

What bounds modelport's figures: peak RSS is set while the model is loaded (the weights read from
safetensors into the module: file pages and the module's copy, about 2.6x the checkpoint for a moment),
not by the export, which writes each weight straight from the module into the file, nor by the check,
which runs after the module is released. Wall time is mostly torch's TorchScript-based exporter itself
(its ONNX shape inference), then importing torch, loading, and the onnxruntime check.

Usage: python benchmarks/bench_onnx_export.py [--optimum /work/optimum-venv/bin/optimum-cli] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB, DIM = 50257, 768


def build(dst: Path) -> None:
    import torch
    import transformers

    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=DIM, n_layer=12, n_head=12)
    torch.manual_seed(0)                      # a separate process: the seed is this script's own
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(dst)


def describe(path: Path) -> tuple[int, int]:
    """Bytes written (the .onnx and any data beside it) and initializers shaped like the embedding."""
    import onnx

    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name.split(".")[0]))
    proto = onnx.load(str(path), load_external_data=False)
    tied = sum(1 for t in proto.graph.initializer if sorted(t.dims) == sorted([VOCAB, DIM]))
    return size, tied


def one(label: str, cmd: list[str], out: Path, env=None) -> dict:
    # each measured command runs in a fresh child of a fresh python, so ru_maxrss is its own
    code = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);w=time.perf_counter()-t;"
            "print(json.dumps([w,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,p.returncode,"
            "p.stderr[-1500:]]))")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    import json

    wall, peak, rc, err = json.loads(proc.stdout.strip().splitlines()[-1])
    if rc != 0:
        print(f"{label} FAILED (exit {rc}):\n{err}", file=sys.stderr)
        return {"label": label, "ok": False}
    size, tied = describe(out)
    return {"label": label, "ok": True, "wall": wall, "peak": peak, "size": size, "tied": tied}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimum", default="/work/optimum-venv/bin/optimum-cli")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-onnx-"))
    src = work / "gpt2-small"
    if not (src / "config.json").exists():
        build(src)
    ckpt = sum(p.stat().st_size for p in src.iterdir())
    print(f"source: {src} ({ckpt / 1e6:.0f} MB, GPT-2 small shape, tied embedding), {os.cpu_count()} CPUs")
    rows = []
    out = work / "modelport" / "model.onnx"
    shutil.rmtree(out.parent, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows.append(one("modelport", [sys.executable, "-m", "modelport", "convert", str(src), str(out), "--opset", "17"],
                    out, env))
    if Path(args.optimum).exists():
        odir = work / "optimum"
        shutil.rmtree(odir, ignore_errors=True)
        rows.append(one("optimum", [args.optimum, "export", "onnx", "--model", str(src), "--task", "text-generation",
                                    "--opset", "17", "--no-post-process", str(odir)], odir / "model.onnx"))
    else:
        print(f"optimum-cli not found at {args.optimum}: measuring modelport alone")
    print(f"{'':10} {'wall s':>8} {'peak RSS':>10} {'written':>10}  tied embedding")
    for r in rows:
        if r["ok"]:
            print(f"{r['label']:10} {r['wall']:8.1f} {r['peak'] / 1e9:8.2f} GB {r['size'] / 1e6:7.0f} MB  "
                  + ("stored once" if r["tied"] == 1 else f"stored {r['tied']} times"))
    if len(rows) == 2 and all(r["ok"] for r in rows):
        m, o = rows
        print(f"modelport / optimum: wall {m['wall'] / o['wall']:.2f}x (target <= 0.8), "
              f"peak RSS {m['peak'] / o['peak']:.2f}x (target <= 0.5)")


if __name__ == "__main__":
    main()
