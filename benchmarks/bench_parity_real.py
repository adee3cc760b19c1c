"""Parity's wall time and peak memory on a real model, against loading the models and one forward.

    python benchmarks/bench_parity_real.py MODEL_DIR [--candidates copy,onnx,fp16] [--threads 2] [--workdir DIR]

MODEL_DIR is a Hugging Face directory of a causal LM (e.g. SmolLM2-135M-Instruct). Candidates, made first:

    copy    the directory's own model.safetensors as bare weights (they borrow MODEL_DIR/config.json)
    onnx    `modelport convert MODEL_DIR x.onnx` (the graph builder, with its key/value cache)
    fp16    a copy of the directory with every floating tensor cast to float16

For each candidate, every measurement runs in its own process (peak RSS is the process's ``ru_maxrss``),
side by side in one run:

    alone    each model loaded alone as parity loads it (the reference in transformers, the candidate as detected)
             and run once on the input sets parity feeds: the larger of the two is "the larger model plus the
             runtime"
    bare     both models loaded and each run once on the same input sets (no calibration, no generation, nothing
             compared)
    parity   modelport.parity(MODEL_DIR, candidate) end to end with the defaults (float64 calibration run,
             16 greedy tokens, the every-id embedding pass, the report)

and prints parity / bare (wall, and CPU time, which a busy machine disturbs less; target 1.5x) and
parity / alone (peak RSS; target 1.3x). bare and parity run --repeat times (default 3), interleaved, and
the fastest run of each counts (the highest peak RSS): on a shared virtual machine a single run's wall
time swings by a third.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(path: str, ref_dir: str, role: str):
    from modelport.errors import ConfigNeededError
    from modelport.models.runnable import load_runnable

    if role == "reference":
        return load_runnable(path, engine="transformers")
    try:
        return load_runnable(path)
    except ConfigNeededError:                       # bare weights: the reference's config, as parity borrows it
        return load_runnable(path, config=Path(ref_dir) / "config.json")


def child(mode: str, model: str, candidate: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if candidate.endswith(".onnx"):
        import onnxruntime  # noqa: F401  (the runtime parity will load, in every mode)
    import transformers  # noqa: F401

    start = time.perf_counter()
    extra: dict = {}
    if mode == "parity":
        from modelport.parity import parity

        rep = parity(model, candidate)
        extra = {"passed": bool(rep), "floors": [round(c.max_abs / c.floor, 2) for c in rep.candidates[0].comparisons
                                                 if c.floor and c.max_abs is not None][:3]}
    else:
        from modelport.parity.inputs import input_sets

        roles = {"ref": ["reference"], "cand": ["candidate"], "bare": ["reference", "candidate"]}[mode]
        models = [_load(model if role == "reference" else candidate, model, role) for role in roles]
        ref_like = models[0]
        for m in models:
            for s in input_sets(ref_like, reserve=16):
                m.run(s.feeds)
    wall = time.perf_counter() - start
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "cpu": use.ru_utime + use.ru_stime, "rss_mb": use.ru_maxrss / 1024, **extra}


def make_candidates(model: Path, wanted: list[str], work: Path) -> dict[str, Path]:
    out = {}
    if "copy" in wanted:
        out["safetensors copy (bare weights)"] = model / "model.safetensors"
    if "onnx" in wanted:
        dst = work / "onnx" / "model.onnx"
        subprocess.run([sys.executable, "-m", "modelport", "convert", str(model), str(dst)], check=True,
                       capture_output=True)
        out["ONNX export (builder, KV cache)"] = dst
    if "fp16" in wanted:
        from safetensors.torch import load_file, save_file

        dst = work / "fp16"
        dst.mkdir()
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(model / "model.safetensors").items()}
        save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
        del state
        cfg = json.loads((model / "config.json").read_text())
        cfg["torch_dtype"] = cfg["dtype"] = "float16"
        (dst / "config.json").write_text(json.dumps(cfg))
        out["fp16 cast (HF directory)"] = dst
    return out


def run_child(mode: str, model: Path, cand: Path, threads: int) -> dict:
    res = subprocess.run([sys.executable, __file__, str(model), "--candidate", str(cand), "--threads", str(threads),
                          "--child", mode], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--candidates", default="copy,onnx,fp16", help="comma-separated: copy, onnx, fp16")
    ap.add_argument("--candidate", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a busy shared machine, threads that wait on each other cost more "
                         "than they give)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of bare and parity runs, interleaved; the fastest of each counts (peak RSS: the highest)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, str(args.model), args.candidate, args.threads)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        cands = make_candidates(args.model, args.candidates.split(","), Path(tmp))
        print(f"reference: {args.model} (transformers); {args.threads} threads; defaults: seq 1, 8, 32 at batch 2, "
              "16 greedy tokens, float64 calibration", flush=True)
        print(f"{'candidate':<34} {'bare s':>7} {'parity s':>8} {'ratio':>6} {'cpu ratio':>9}   {'alone MB':>8} "
              f"{'parity MB':>9} {'ratio':>6}  verdict", flush=True)
        for label, cand in cands.items():
            r = {mode: run_child(mode, args.model, cand, args.threads) for mode in ("ref", "cand")}
            rounds = [{mode: run_child(mode, args.model, cand, args.threads) for mode in ("bare", "parity")}
                      for _ in range(args.repeat)]           # interleaved, so a busy spell hits both alike
            for mode in ("bare", "parity"):
                r[mode] = min((x[mode] for x in rounds), key=lambda run: run["wall"])
                r[mode]["rss_mb"] = max(x[mode]["rss_mb"] for x in rounds)
            alone = max(r["ref"]["rss_mb"], r["cand"]["rss_mb"])
            print(f"{label:<34} {r['bare']['wall']:7.1f} {r['parity']['wall']:8.1f} "
                  f"{r['parity']['wall'] / r['bare']['wall']:5.2f}x {r['parity']['cpu'] / r['bare']['cpu']:8.2f}x   "
                  f"{alone:8.0f} {r['parity']['rss_mb']:9.0f} "
                  f"{r['parity']['rss_mb'] / alone:5.2f}x  {'PASS' if r['parity']['passed'] else 'FAIL'} "
                  f"(floors {r['parity']['floors']})", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
