"""Streaming conversion against `cp`, side by side in one run.

Builds a GPT-2-medium-shaped fp32 state dict (24 layers, d=1024, vocab 50257,
n_positions 1024, lm_head tied to wte; about 1.4 GB) with torch.save, then times,
each in a fresh process with the file in the page cache:

  cp                       coreutils cp of the .pt file
  pt -> safetensors        modelport.convert.convert
  safetensors -> pt        modelport.convert.convert (real zip CRC-32s, the default)
  safetensors -> pt, no CRC  the same with Options(crc32=False) (--no-crc32)
  ... no manifest          both directions with manifest=False (--no-manifest): the manifest's
                           cost is the difference (it hashes source and output with sha256)
  torch.load + save_file   the usual way, for reference
  load_file + torch.save   the usual way back, for reference

and prints wall time (best of --repeat), the ratio to cp (target <= 1.3), peak RSS
of the process and its ratio to the checkpoint size (target <= 0.35). Then it builds
a checkpoint about 4x larger with the same largest tensor (more layers) and prints
how much more peak RSS each modelport direction takes (target < 100 MB).

    python benchmarks/bench_streaming.py            # the full run (about 2 x 6 GB of disk)
    python benchmarks/bench_streaming.py --small    # a quick run on a 4-layer model
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTLE = 1.0
D, VOCAB, POS = 1024, 50257, 1024

BUILD = """
import sys, torch
layers, path, D, VOCAB, POS = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])
g = torch.Generator().manual_seed(0)
def t(*shape):
    return torch.empty(shape).normal_(0, 0.02, generator=g)
sd = {"transformer.wte.weight": t(VOCAB, D), "transformer.wpe.weight": t(POS, D)}
for i in range(layers):
    p = f"transformer.h.{i}."
    sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = t(D), t(D)
    sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"] = t(D, 3 * D), t(3 * D)
    sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"] = t(D, D), t(D)
    sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = t(D), t(D)
    sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = t(D, 4 * D), t(4 * D)
    sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = t(4 * D, D), t(D)
sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = t(D), t(D)
sd["lm_head.weight"] = sd["transformer.wte.weight"]   # tied, as in GPT-2
torch.save(sd, path)
"""

# Each measured step runs in its own interpreter and prints its own peak RSS (KiB).
PEAK = "import resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
STEPS = {
    "pt -> safetensors": "from modelport.convert import convert; import sys; convert(sys.argv[1], sys.argv[2], to='safetensors', progress=False)",
    "safetensors -> pt": "from modelport.convert import convert; import sys; convert(sys.argv[1], sys.argv[2], to='pt', progress=False)",
    "pt -> st, no manifest": (
        "from modelport.convert import convert; import sys\n"
        "convert(sys.argv[1], sys.argv[2], to='safetensors', progress=False, manifest=False)"
    ),
    "st -> pt, no manifest": (
        "from modelport.convert import convert; import sys\n"
        "convert(sys.argv[1], sys.argv[2], to='pt', progress=False, manifest=False)"
    ),
    "safetensors -> pt, no CRC": (
        "from modelport.convert import convert; from modelport.formats.base import Options; import sys\n"
        "convert(sys.argv[1], sys.argv[2], to='pt', progress=False, options=Options(crc32=False))"
    ),
    "torch.load + save_file": (
        "import sys, torch; from safetensors.torch import save_file\n"
        "sd = torch.load(sys.argv[1], weights_only=True)\n"
        "seen = set(); out = {}\n"
        "for k, v in sd.items():\n"
        "    if v.data_ptr() not in seen: seen.add(v.data_ptr()); out[k] = v\n"
        "save_file(out, sys.argv[2])"
    ),
    "load_file + torch.save": "import sys, torch; from safetensors.torch import load_file; torch.save(load_file(sys.argv[1]), sys.argv[2])",
}


def params_per_layer() -> int:
    return 2 * D + D * 3 * D + 3 * D + D * D + D + 2 * D + D * 4 * D + 4 * D + 4 * D * D + D


def run(cmd: list[str], out: Path | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes, 0 when the step does not report it) of one fresh process."""
    if out is not None and out.exists():
        out.unlink()
    os.sync()
    time.sleep(SETTLE)   # let the unlink's discard and writeback finish outside the timing
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"step failed: {' '.join(cmd)}\n{proc.stderr}")
    peak = [int(line.split()[1]) * 1024 for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    return wall, (peak[0] if peak else 0)


def step(name: str, src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-c", f"{STEPS[name]}\n{PEAK}", str(src), str(dst)]


def rounds(steps: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, tuple[float, int]]:
    """Run every step once per round, interleaved; best wall time and highest peak RSS per step."""
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in steps}
    for _ in range(repeat):
        for name, (cmd, out) in steps.items():
            runs[name].append(run(cmd, out))
    return {name: (min(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in runs.items()}


def build(layers: int, path: Path) -> int:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD, str(layers), str(path), str(D), str(VOCAB), str(POS)], check=True)
    size = path.stat().st_size
    print(f"built {path.name}: {layers} layers, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
    return size


def check(pt: Path, st: Path) -> None:
    """The converted files hold what the source holds (spot check through torch)."""
    code = (
        "import sys, torch; from safetensors.torch import load_file\n"
        "a = torch.load(sys.argv[1], weights_only=True, mmap=True); b = load_file(sys.argv[2])\n"
        "for k in ('transformer.wte.weight', 'transformer.h.0.mlp.c_fc.weight', 'transformer.ln_f.bias'):\n"
        "    assert torch.equal(a[k], b[k]), k\n"
        "assert a['lm_head.weight'].data_ptr() == a['transformer.wte.weight'].data_ptr()\n"
        "import torch.utils.serialization.config as config\n"
        "config.load.calculate_storage_offsets = True   # torch computes every offset, checked under the debug flag\n"
        "c = torch.load(sys.argv[1], weights_only=True, mmap=True)\n"
        "assert all(torch.equal(c[k], b[k]) for k in b)\n"
        "print('ok', len(a), len(b))"
    )
    env = dict(os.environ, TORCH_SERIALIZATION_DEBUG="1")
    out = subprocess.run([sys.executable, "-c", code, str(pt), str(st)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"converted files differ: {out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="4 layers instead of 24 (a quick run)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the timed steps; the best wall time counts")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--no-reference", action="store_true", help="skip the torch.load reference steps")
    args = ap.parse_args()

    layers = 4 if args.small else 24
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=args.dir))
    try:
        src = work / "model.pt"
        size = build(layers, src)
        st, back, copy = work / "model.safetensors", work / "back.pt", work / "copy.pt"
        run(step("pt -> safetensors", src, st), st)   # warm the page cache (and make the safetensors input)
        timed = rounds({
            "cp": (["cp", str(src), str(copy)], copy),
            "pt -> safetensors": (step("pt -> safetensors", src, st), st),
            "safetensors -> pt": (step("safetensors -> pt", st, back), back),
            "safetensors -> pt, no CRC": (step("safetensors -> pt, no CRC", st, back), back),
            "pt -> st, no manifest": (step("pt -> st, no manifest", src, st), st),
            "st -> pt, no manifest": (step("st -> pt, no manifest", st, back), back),
        }, args.repeat)
        rows = [(name, *timed[name]) for name in timed]
        copy.unlink()
        check(back, st)
        if not args.no_reference:
            ref_st, ref_pt = work / "ref.safetensors", work / "ref.pt"
            ref = rounds({"torch.load + save_file": (step("torch.load + save_file", src, ref_st), ref_st),
                          "load_file + torch.save": (step("load_file + torch.save", ref_st, ref_pt), ref_pt)}, 1)
            rows += [(name, *ref[name]) for name in ref]
            ref_st.unlink()
            ref_pt.unlink()
        cp_wall = rows[0][1]
        print(f"\ncheckpoint: {size / 1e9:.3f} GB, {layers} layers; best of {args.repeat} (reference steps: 1 run)")
        print(f"{'step':<24}{'wall s':>9}{'x cp':>8}{'peak RSS MB':>13}{'RSS/ckpt':>10}")
        for name, wall, peak in rows:
            rss = f"{peak / 1e6:13.1f}{peak / size:10.3f}" if peak else f"{'-':>13}{'-':>10}"
            print(f"{name:<24}{wall:9.3f}{wall / cp_wall:8.2f}{rss}")
        peaks = {name: peak for name, _, peak in rows}
        for p in (st, back):
            p.unlink()
        src.unlink()

        # 4x the bytes, same largest tensor (wte): more layers.
        embed = (VOCAB + POS) * D
        total = embed + layers * params_per_layer() + 2 * D
        big_layers = round((4 * total - embed - 2 * D) / params_per_layer())
        big = work / "big.pt"
        big_size = build(big_layers, big)
        big_timed = rounds({"pt -> safetensors": (step("pt -> safetensors", big, st), st),
                            "safetensors -> pt": (step("safetensors -> pt", st, back), back)}, 1)
        big_rows = [(name, *big_timed[name]) for name in big_timed]
        check(back, st)
        print(f"\n4x checkpoint: {big_size / 1e9:.3f} GB ({big_size / size:.2f}x), {big_layers} layers, same largest tensor")
        print(f"{'step':<24}{'wall s':>9}{'peak RSS MB':>13}{'extra vs 1x MB':>16}")
        for name, wall, peak in big_rows:
            print(f"{name:<24}{wall:9.3f}{peak / 1e6:13.1f}{(peak - peaks[name]) / 1e6:16.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
