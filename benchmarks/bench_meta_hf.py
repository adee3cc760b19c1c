"""Peak memory of Meta <-> HF Llama conversions against the checkpoint size.

Builds a Llama-2-7B-shaped HF checkpoint (dim 4096, 32 heads, ffn 11008, vocab 32000) with
fp16 random weights, generated one tensor at a time (never the whole model in memory), then
times four conversions, each in its own process, and prints its peak RSS (VmHWM: what the
process ever had resident, file-backed pages included) and its peak anonymous RSS (RssAnon,
sampled every 20 ms: the memory the conversion itself allocated):

    hf -> meta              q/k rows permuted, one tensor at a time
    meta -> hf              back again (untransformed tensors copied file to file)
    hf -> meta --shards 2   split on write
    meta(2 shards) -> hf    merged on read, one tensor's shards at a time

Usage: python benchmarks/bench_meta_hf.py [--layers 32] [--workdir DIR] [--keep]
(--layers 32 is the full 7B, 13.5 GB per copy, about 55 GB of disk in all; fewer layers
keep the 7B widths and shrink the disk and time needed.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelport.formats import get  # noqa: E402
from modelport.formats.base import TensorInfo, TensorSource, WriteOptions  # noqa: E402

DIM, N_HEADS, N_KV, FFN, VOCAB = 4096, 32, 32, 11008, 32000


class RandomLlama(TensorSource):
    """A Llama in the HF layout whose fp16 tensors are generated when read."""

    def __init__(self, layers: int):
        super().__init__(Path("random-llama"))
        self.config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
                       "intermediate_size": FFN, "num_hidden_layers": layers, "num_attention_heads": N_HEADS,
                       "num_key_value_heads": N_KV, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                       "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16"}
        kv = DIM // N_HEADS * N_KV
        shapes = {"model.embed_tokens.weight": (VOCAB, DIM)}
        for i in range(layers):
            p = f"model.layers.{i}."
            shapes.update({p + "self_attn.q_proj.weight": (DIM, DIM), p + "self_attn.k_proj.weight": (kv, DIM),
                           p + "self_attn.v_proj.weight": (kv, DIM), p + "self_attn.o_proj.weight": (DIM, DIM),
                           p + "mlp.gate_proj.weight": (FFN, DIM), p + "mlp.up_proj.weight": (FFN, DIM),
                           p + "mlp.down_proj.weight": (DIM, FFN), p + "input_layernorm.weight": (DIM,),
                           p + "post_attention_layernorm.weight": (DIM,)})
        shapes.update({"model.norm.weight": (DIM,), "lm_head.weight": (VOCAB, DIM)})
        self._shapes = shapes

    def names(self):
        return list(self._shapes)

    def info(self, name):
        return TensorInfo(name, "float16", self._shapes[name])

    def read_bytes(self, name):
        import torch

        g = torch.Generator().manual_seed(hash(name) & 0xFFFF_FFFF)
        t = torch.empty(self._shapes[name], dtype=torch.float16).normal_(0.0, 0.02, generator=g)
        return memoryview(t.numpy()).cast("B")


def _peak(pid: int, out: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "VmHWM:")):
                        key, kb = line.split()[:2]
                        out[key] = max(out.get(key, 0), int(kb) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        stop.wait(0.02)


def run_convert(src: Path, dst: Path, to: str, shards: int | None) -> dict:
    code = ("import sys, modelport; from modelport.formats.base import Options; "
            f"modelport.convert({str(src)!r}, {str(dst)!r}, to={to!r}, options=Options(shards={shards!r}), progress=False)")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen: dict = {}
    stop = threading.Event()
    th = threading.Thread(target=_peak, args=(proc.pid, seen, stop))
    th.start()
    proc.wait()
    stop.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"conversion {src} -> {dst} failed with exit code {proc.returncode}")
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the forked parent across exec
    return {"seconds": time.perf_counter() - t0, "maxrss": seen.get("VmHWM:", 0), "anon": seen.get("RssAnon:", 0)}


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-meta-hf-", dir=args.workdir))
    try:
        src = RandomLlama(args.layers)
        need = sum(src.info(n).nbytes for n in src.names())
        free = shutil.disk_usage(work).free
        if free < 4.2 * need:
            raise SystemExit(f"{work}: {free / 2**30:.1f} GiB free, the benchmark needs {4.2 * need / 2**30:.1f} GiB; use fewer --layers")
        t0 = time.perf_counter()
        get("hf").write(src, work / "hf", WriteOptions(config=src.config))
        print(f"Llama, 7B widths, {args.layers} layers (32 is the full 7B), fp16 random weights: "
              f"{need / 2**30:.2f} GiB checkpoint, built in {time.perf_counter() - t0:.0f} s", flush=True)
        steps = [("hf -> meta", "hf", "meta1", "meta", None), ("meta -> hf", "meta1", "hf1", "hf", None),
                 ("hf -> meta --shards 2", "hf", "meta2", "meta", 2), ("meta (2 shards) -> hf", "meta2", "hf2", "hf", None)]
        print(f"{'conversion':<24}{'seconds':>9}{'peak RSS':>12}{'peak anon':>12}{'RSS/ckpt':>10}{'anon/ckpt':>11}")
        for label, a, b, to, shards in steps:
            r = run_convert(work / a, work / b, to, shards)
            print(f"{label:<24}{r['seconds']:>9.1f}{r['maxrss'] / 2**20:>10.0f}MB{r['anon'] / 2**20:>10.0f}MB"
                  f"{r['maxrss'] / need:>10.3f}{r['anon'] / need:>11.3f}", flush=True)
            if b.startswith("hf"):   # the round trip gave back the same bytes
                same = _same_safetensors(work / "hf", work / b)
                print(f"{'':<24}round trip to {b}: {'bit-exact' if same else 'DIFFERENT'}", flush=True)
            shutil.rmtree(work / a) if a.startswith("meta") else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _same_safetensors(x: Path, y: Path) -> bool:
    from modelport import formats

    with formats.open(x) as a, formats.open(y) as b:
        if a.names() != b.names():
            return False
        import hashlib

        for n in a.names():
            if hashlib.sha1(a.read_bytes(n)).digest() != hashlib.sha1(b.read_bytes(n)).digest():
                return False
    return json.loads((x / "config.json").read_text())["num_hidden_layers"] == json.loads((y / "config.json").read_text())["num_hidden_layers"]


if __name__ == "__main__":
    main()
