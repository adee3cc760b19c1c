"""Parity's wall time and peak memory on a real model, against loading both models and one forward.

    python benchmarks/bench_parity_real.py SMOLLM2_DIR [--candidate model.safetensors|x.onnx] [--threads 2]

Each measurement runs in its own process (peak RSS is the process's ``ru_maxrss``), side by side in one run:

    bare     load the reference (transformers) and the candidate, run each once on the same input sets
             parity feeds (no calibration run, no generation, nothing compared)
    parity   modelport.parity(reference, candidate) end to end with the defaults (float64 calibration run,
             16 greedy tokens, the every-id embedding pass, the report)
    model    the reference loaded alone (the larger model's memory, for the RSS ratio)

Prints the figures and the ratios parity / bare (wall) and parity / model (peak RSS). Measured on a
shared machine the wall times are noisy; the ratio of one run is what to compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(mode: str, model: str, candidate: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    if mode == "parity":
        from modelport.parity import parity

        rep = parity(model, candidate)
        extra = {"passed": bool(rep)}
    else:
        from modelport.models.runnable import load_runnable
        from modelport.parity.inputs import input_sets

        ref = load_runnable(model, engine="transformers")
        extra = {}
        if mode == "bare":
            cand = load_runnable(candidate)
            for s in input_sets(ref, reserve=16):
                ref.run(s.feeds)
                cand.run(s.feeds)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--candidate", help="default: the model's own model.safetensors (borrowing its config)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child")
    args = ap.parse_args()
    candidate = args.candidate or str(Path(args.model) / "model.safetensors")
    if args.child:
        child(args.child, args.model, candidate, args.threads)
        return
    res = {}
    for mode in ("model", "bare", "parity"):
        out = subprocess.run([sys.executable, __file__, args.model, "--candidate", candidate, "--threads",
                              str(args.threads), "--child", mode], capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:<7} wall {res[mode]['wall']:7.1f} s   peak RSS {res[mode]['rss_mb']:7.0f} MB"
              + (f"   passed {res[mode]['passed']}" if "passed" in res[mode] else ""), flush=True)
    print(f"parity / bare wall: {res['parity']['wall'] / res['bare']['wall']:.2f}x (target 1.5x); "
          f"parity / reference-alone peak RSS: {res['parity']['rss_mb'] / res['model']['rss_mb']:.2f}x (target 1.3x)")


if __name__ == "__main__":
    main()
