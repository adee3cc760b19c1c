"""Parity of a large float16 pair within a memory budget: a random Llama of a chosen shape, written as a Hugging
Face directory (the reference) and a copy of its safetensors file (the candidate, bare weights that borrow
the directory's config), then ``modelport parity REF CANDIDATE`` in a process of its own.

    python benchmarks/bench_parity_big.py --shape 7b --workdir /disk/with/28GB [--parity-args "..."]
    python benchmarks/bench_parity_big.py --shape 1gb --workdir /tmp

Shapes (float16, untied output embedding, vocab 32000):

    7b     Llama-2-7B: dim 4096, 32 layers, 32 heads, ffn 11008: 6.74 B parameters, 13.5 GB per file
    1gb    dim 2048, 8 layers, 16 heads, ffn 5504: 0.54 B parameters, 1.07 GB per file
    tiny   dim 64, 2 layers, 4 heads (2 kv heads), ffn 96, vocab 1000: for tests

The weights are drawn tensor by tensor from a seeded generator and streamed into the file (peak memory: one
tensor), so building needs disk, not memory. Parity then holds one model at a time: the reference (run by
transformers straight from its memory-mapped file) is released before the candidate loads, and its float64
calibration run casts one module at a time (the largest module in float64 beside the model, not the whole
model: 54 GB for 7B). The script prints parity's exit code, wall time and peak RSS (and the available memory
before it ran); peak RSS counts the pages of the memory-mapped files too, which the system can drop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, vocab=32000),
    "1gb": dict(dim=2048, n_layers=8, n_heads=16, n_kv_heads=16, ffn_dim=5504, vocab=32000),
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab=1000),
}


def tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The Llama hub names and shapes of a shape (untied output embedding)."""
    d, f, v = shape["dim"], shape["ffn_dim"], shape["vocab"]
    hd = d // shape["n_heads"]
    kv = shape["n_kv_heads"] * hd
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(shape["n_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (d,)), (p + "self_attn.q_proj.weight", (d, d)),
                (p + "self_attn.k_proj.weight", (kv, d)), (p + "self_attn.v_proj.weight", (kv, d)),
                (p + "self_attn.o_proj.weight", (d, d)), (p + "post_attention_layernorm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
                (p + "mlp.down_proj.weight", (d, f))]
    return out + [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]


def write_safetensors(path: Path, shape: dict, seed: int) -> int:
    """Random float16 weights streamed into a safetensors file, one tensor at a time; returns its size."""
    import math

    import torch

    names = tensors(shape)
    header, offset = {}, 0
    for name, shp in names:
        n = math.prod(shp) * 2
        header[name] = {"dtype": "F16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shp in names:
            if name.endswith("norm.weight"):
                t = 1.0 + 0.05 * torch.randn(shp, generator=gen)
            else:
                t = 0.02 * torch.randn(shp, generator=gen)
            f.write(t.half().numpy().tobytes())
            del t
    tmp.replace(path)
    return path.stat().st_size


def config(shape: dict) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["dim"],
            "intermediate_size": shape["ffn_dim"], "num_hidden_layers": shape["n_layers"],
            "num_attention_heads": shape["n_heads"], "num_key_value_heads": shape["n_kv_heads"],
            "vocab_size": shape["vocab"], "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16",
            "dtype": "float16", "attention_bias": False, "mlp_bias": False}


def build_pair(work: Path, shape_name: str, seed: int = 0, link: bool = False) -> tuple[Path, Path]:
    """``work/ref`` (config.json + model.safetensors) and ``work/candidate.safetensors`` (a copy, or a hard link)."""
    shape = SHAPES[shape_name]
    ref = work / "ref"
    ref.mkdir(parents=True, exist_ok=False)
    (ref / "config.json").write_text(json.dumps(config(shape), indent=1))
    write_safetensors(ref / "model.safetensors", shape, seed)
    cand = work / "candidate.safetensors"
    if link:
        os.link(ref / "model.safetensors", cand)
    else:
        shutil.copyfile(ref / "model.safetensors", cand)
    return ref, cand


def available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_parity(ref: Path, cand: Path, extra: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "modelport", "parity", str(ref), str(cand), *extra]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"cmd": shlex.join(cmd), "exit": res.returncode, "wall": wall, "peak_rss": peak, "stdout": res.stdout,
            "stderr": res.stderr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="1gb")
    ap.add_argument("--workdir", type=Path, required=True, help="where the pair is written (2 x the file size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--link", action="store_true", help="hard-link the candidate instead of copying (half the disk)")
    ap.add_argument("--keep", action="store_true", help="keep the pair afterwards")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--parity-args", default="", help="more arguments for modelport parity, e.g. '--seq-len 1,8'")
    args = ap.parse_args()
    work = args.workdir / f"parity-{args.shape}"
    if work.exists():
        raise SystemExit(f"{work} exists; remove it or choose another --workdir")
    start = time.perf_counter()
    ref, cand = build_pair(work, args.shape, args.seed, args.link)
    size = cand.stat().st_size
    print(f"built {args.shape}: {size / 1e9:.2f} GB per file in {time.perf_counter() - start:.0f} s ({work})", flush=True)
    before = available()
    out = run_parity(ref, cand, shlex.split(args.parity_args), args.threads)
    print(out["stdout"][-3000:])
    if out["exit"] not in (0, 1):
        print(out["stderr"][-3000:], file=sys.stderr)
    print(f"$ {out['cmd']}\nexit {out['exit']}; wall {out['wall']:.0f} s; peak RSS {out['peak_rss'] / 2**30:.2f} GiB "
          f"(one file {size / 2**30:.2f} GiB, {out['peak_rss'] / size:.2f}x; memory available before: "
          f"{before / 2**30:.1f} GiB)", flush=True)
    if not args.keep:
        shutil.rmtree(work)
    sys.exit(out["exit"])


if __name__ == "__main__":
    main()
