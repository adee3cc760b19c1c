"""What ``modelport batch`` costs beyond the jobs themselves: the local pool against Ray, side by side.

Builds tiny seeded Hugging Face models of each family (GPT-2, Llama with GQA, GPT-NeoX, Qwen2) and a
jobs file of 24 conversions: each model to safetensors, pt, hf (--verify), meta (Llama), ONNX
(--verify) and TorchScript (--verify); with --smol DIR (a SmolLM2-135M directory) 4 more jobs of that
size. Runs the same jobs file on the local pool and on a local Ray (``ray.init(num_cpus=WORKERS)``;
its start-up is timed apart), and prints for each:

    wall         the whole batch, start to last result
    in-job       the sum of the seconds each job spent inside its process (the conversion itself)
    per job      (the sum of the jobs' walls as the scheduler saw them - in-job) / jobs: process start,
                 imports, and the scheduler's own work; the cost of running a job in a process of its own
    sched        (wall x workers - sum of the jobs' walls) / jobs: time a free slot sat idle

Targets: per-job overhead <= 0.1 s locally and <= 0.3 s on Ray (scheduling, not the process start
that isolating a job needs); with --cores-sweep on a many-core machine, 16 cores >= 6x one core.

Usage: python benchmarks/bench_batch.py [--workers 2] [--smol DIR] [--no-ray] [--cores-sweep 1,16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_models(work: Path) -> dict[str, Path]:
    """One tiny seeded HF directory per family."""
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "models"))
    import tiny

    out = {}
    makers = {"gpt2": tiny.gpt2, "llama": tiny.llama, "gptneox": tiny.gptneox,
              "qwen2": lambda seed: tiny.randomize(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
                  hidden_size=24, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
                  vocab_size=tiny.VOCAB, num_hidden_layers=3, max_position_embeddings=64)), seed)}
    for i, (name, make) in enumerate(makers.items()):
        torch.manual_seed(i)
        model = make(seed=i)
        path = work / "models" / name
        model.save_pretrained(path)
        out[name] = path
    return out


def jobs_for(models: dict[str, Path], smol: Path | None) -> list[dict]:
    jobs = []
    for name, path in models.items():
        jobs += [
            {"name": f"{name}-safetensors", "src": str(path), "dst": f"out/{name}.safetensors"},
            {"name": f"{name}-pt", "src": str(path), "dst": f"out/{name}.pt"},
            {"name": f"{name}-hf", "src": str(path), "dst": f"out/{name}-hf", "to": "hf", "verify": True},
            {"name": f"{name}-onnx", "src": str(path), "dst": f"out/{name}.onnx", "verify": True},
            {"name": f"{name}-ts", "src": str(path), "dst": f"out/{name}.ts", "to": "torchscript", "verify": True},
        ]
        if name == "llama":
            jobs.append({"name": "llama-meta", "src": str(path), "dst": "out/llama-meta", "to": "meta"})
    jobs += [{"name": "gpt2-fp16", "src": str(models["gpt2"]), "dst": "out/gpt2-fp16.safetensors",
              "options": {"dtype": "fp16"}},
             {"name": "llama-bf16", "src": str(models["llama"]), "dst": "out/llama-bf16", "to": "hf",
              "options": {"dtype": "bf16"}},
             {"name": "neox-t7", "src": str(models["gptneox"]), "dst": "out/neox.t7"}]
    if smol is not None:
        jobs += [{"name": "smol-safetensors", "src": str(smol), "dst": "out/smol.safetensors"},
                 {"name": "smol-pt", "src": str(smol), "dst": "out/smol.pt"},
                 {"name": "smol-hf-fp16", "src": str(smol), "dst": "out/smol-fp16", "to": "hf",
                  "options": {"dtype": "fp16"}},
                 {"name": "smol-hf-verify", "src": str(smol), "dst": "out/smol-hf", "to": "hf", "verify": True}]
    return jobs


def run(jobs_file: Path, workers: int, ray) -> dict:
    from modelport.batch import batch

    out = jobs_file.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    for state in jobs_file.parent.glob(".*.modelport-batch.json"):
        state.unlink()
    started = time.perf_counter()
    report = batch(jobs_file, workers=workers, ray=ray)
    wall = time.perf_counter() - started
    rows = report.results
    walls = sum(r.get("wall") or 0 for r in rows)
    inside = sum(r.get("seconds") or 0 for r in rows)
    bad = [f"{r['name']}: {r['status']} {r.get('error')}" for r in rows if r["status"] not in ("done", "passed")]
    return {"wall": wall, "jobs": len(rows), "in_job": inside, "per_job": (walls - inside) / len(rows),
            "sched": max(0.0, wall * workers - walls) / len(rows), "bad": bad,
            "statuses": report.counts()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smol", type=Path, help="a SmolLM2-135M HF directory: 4 jobs of that size")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--cores-sweep", help="comma-separated worker counts, local pool only (e.g. 1,16)")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    models = build_models(work)
    jobs_file = work / "jobs.json"
    jobs_file.write_text(json.dumps(jobs_for(models, args.smol), indent=1))
    print(f"{len(json.loads(jobs_file.read_text()))} jobs in {jobs_file}, {args.workers} workers")
    rows = [("local", run(jobs_file, args.workers, None))]
    if not args.no_ray:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        print(f"ray start-up: {time.perf_counter() - t:.1f} s (not counted below)")
        try:
            rows.append(("ray", run(jobs_file, args.workers, True)))
        finally:
            ray.shutdown()
    for n in [int(x) for x in args.cores_sweep.split(",")] if args.cores_sweep else []:
        rows.append((f"local x{n}", run(jobs_file, n, None)))
    print(f"{'runner':<10} {'jobs':>4} {'wall s':>8} {'in-job s':>9} {'per job s':>10} {'idle/job s':>10}  statuses")
    for name, r in rows:
        print(f"{name:<10} {r['jobs']:>4} {r['wall']:>8.1f} {r['in_job']:>9.1f} {r['per_job']:>10.2f} "
              f"{r['sched']:>10.2f}  {r['statuses']}")
        for line in r["bad"]:
            print(f"  {line}")


if __name__ == "__main__":
    main()
