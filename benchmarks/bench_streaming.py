"""Streaming conversion against `cp`, side by side in one run.

Builds a GPT-2-medium-shaped fp32 state dict (24 layers, d=1024, vocab 50257,
n_positions 1024, lm_head tied to wte; about 1.4 GB) with torch.save, then times,
each in a fresh process with the file in the page cache:

  cp                       coreutils cp of the .pt file
  pt -> safetensors        modelport.convert.convert (header padded to align the largest tensor)
  safetensors -> pt        modelport.convert.convert (real zip CRC-32s, storages aligned)
  safetensors -> pt, no CRC  the same with Options(crc32=False) (--no-crc32)
  ..., no align            the same with Options(align=False): torch.save's layout, unpadded
  ..., no manifest         both directions with manifest=False (--no-manifest): the manifest's
                           cost is the difference (it hashes the source in a thread and the output
                           as it is written; blake3 with the fast extra, else sha256)
  torch.load + save_file   the usual way, for reference
  load_file + torch.save   the usual way back, for reference

and prints wall time (best, median and worst of --repeat interleaved rounds), the
ratio of the best to cp's best (targets: pt -> safetensors <= 1.5, safetensors -> pt
<= 1.2), CPU time (user + sys, steadier than wall time on a busy machine), peak RSS of
the process and its ratio to the checkpoint size (target <= 0.05), and what the
alignment padding costs in file size. Then it builds a checkpoint about 4x larger
with the same largest tensor (more layers) and prints how much more peak RSS each
modelport direction takes (target < 100 MB).

copy_file_range (what cp uses, and the writers where offsets agree modulo a page and no byte
needs hashing) is fastest on ext4 when each call starts page-aligned on both sides (--offsets
and --pieces show it); the writers pad large tensors to agree with the source modulo 64 KiB
where the layout is free, and copy the rest through a 512 KiB buffer (as fast as an aligned
kernel copy): see modelport/formats/_stream.py.

    python benchmarks/bench_streaming.py            # the full run (about 2 x 6 GB of disk)
    python benchmarks/bench_streaming.py --small    # a quick run on a 4-layer model
    python benchmarks/bench_streaming.py --offsets  # only copy_file_range at equal and shifted offsets
    python benchmarks/bench_streaming.py --pieces   # only copy_file_range in one call against in pieces
    python benchmarks/bench_streaming.py --phases   # where one conversion's time goes (wall and CPU per phase)

Where the time goes (--phases, 1.42 GB, blake3, zlib-ng, on the shared 2-core machine; the copy's
system time varies by half from run to run with how fast the virtual machine gets fresh pages):
the copy on the main thread 0.45-0.7 s of CPU (cp: 0.34-0.45 s), the source hashed in a thread
0.42-0.52 s, the output hashed by the Sink's thread from the buffers it writes 0.26-0.30 s (0.30-0.38 s
with the zip CRC-32s; 0.06-0.09 s for the CRC-32s alone), imports 0.06-0.09 s, building the manifest
0.03-0.05 s (package versions, the source's layout). Before the Sink, the output was hashed a second
time through maps of the page cache (0.45 s), the CRC-32s read it a third time (0.5 s with zlib's
crc32, the default install then), and copy_file_range between offsets that differ modulo a page (most
of a pt -> safetensors conversion) ran 40 % slower than aligned; through a 512 KiB buffer it is as fast
as the aligned kernel copy. Three threads on two cores: the default conversion is bound by its CPU time.
Writers now allocate their whole file first (fallocate) and copy unhashed spans through one 512 KiB
buffer (the hashed copy's four 2 MiB buffers fall out of the L2 cache): the copy on the main thread went
from 0.68-0.77 s to 0.48 s (pt -> safetensors, no manifest); alone, a one-buffer copy of the file takes
0.34 s instead of 0.48 s and copy_file_range 0.36 s instead of 0.46 s once the blocks are allocated (cp: 0.44 s).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Steps follow each other without a pause: on a virtual machine whose freed memory goes back to the
# host within seconds, a pause makes the next step fault every page it writes back in (measured here:
# a 1.4 GB copy_file_range took 0.33 s right after the previous output was deleted, 2.4-2.7 s after a
# 5 s pause, all of it system time), which swamps what is being measured.
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
def _convert(to: str, options: str = "", manifest: bool = True) -> str:
    """A modelport step; it prints how long convert() itself took (no interpreter start, no imports)."""
    return ("import sys, time\n"
            "from modelport.convert import convert; from modelport.formats.base import Options\n"
            "t0 = time.perf_counter()\n"
            f"convert(sys.argv[1], sys.argv[2], to={to!r}, progress=False, options=Options({options}), "
            f"manifest={manifest})\n"
            "print('CONVERT', time.perf_counter() - t0)")


STEPS = {
    "pt -> safetensors": _convert("safetensors"),
    "safetensors -> pt": _convert("pt"),
    "safetensors -> pt, no CRC": _convert("pt", "crc32=False"),
    "pt -> safetensors, no align": _convert("safetensors", "align=False"),
    "safetensors -> pt, no align": _convert("pt", "align=False"),
    "pt -> safetensors, no manifest": _convert("safetensors", manifest=False),
    "safetensors -> pt, no manifest": _convert("pt", manifest=False),
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


# --phases: one conversion with its working functions wrapped; each prints wall and thread CPU seconds
PHASES = """
import sys, time, threading, importlib, collections
t_start, c_start = time.perf_counter(), time.process_time()
from modelport.convert import convert
hashing, stream, conv = (importlib.import_module(m) for m in ('modelport.convert.hashing', 'modelport.formats._stream', 'modelport.convert'))
t_imp, c_imp = time.perf_counter(), time.process_time()
acc, lock = collections.defaultdict(lambda: [0.0, 0.0, 0]), threading.Lock()
def wrap(owner, name, label):
    f = getattr(owner, name)
    def timed(*a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            with lock:
                e = acc[label]; e[0] += time.perf_counter() - t0; e[1] += time.thread_time() - c0; e[2] += 1
    setattr(owner, name, timed)
wrap(hashing, 'hash_file', 'source hashed (thread)')
wrap(stream._Worker, '_run', 'output hashed, CRC-32s (Sink thread)')
wrap(stream.Sink, 'copy', 'tensor bytes copied (main)')
wrap(stream.Sink, 'write', 'headers written (main)')
wrap(stream.Sink, 'crc_end', 'data descriptors, CRC-32 patched later (main)')
wrap(stream.Sink, 'close', 'waits for the output hash (main)')
wrap(hashing.BackgroundHash, 'get', 'waits for the source hash (main)')
wrap(conv._Record, 'write', 'manifest built and written (main)')
t0, c0 = time.perf_counter(), time.process_time()
convert(sys.argv[1], sys.argv[2], to=sys.argv[3], progress=False, manifest=sys.argv[4] == '1')
t1, c1 = time.perf_counter(), time.process_time()
print(f"PHASE imports|{t_imp - t_start:.3f}|{c_imp - c_start:.3f}|1")
print(f"PHASE convert() in all|{t1 - t0:.3f}|{c1 - c0:.3f}|1")
for k, (w, c, n) in acc.items():
    print(f"PHASE   {k}|{w:.3f}|{c:.3f}|{n}")
"""


def phases(src: Path, st: Path, back: Path) -> None:
    """One conversion each way, with and without the manifest: wall and CPU seconds per phase."""
    print(f"\nwhere the time goes (one run each; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for a, b, to in ((src, st, "safetensors"), (st, back, "pt")):
        for manifest in (True, False):
            b.unlink(missing_ok=True)
            b.with_name(b.name + ".modelport.json").unlink(missing_ok=True)
            os.sync()
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([sys.executable, "-c", PHASES, str(a), str(b), to, "1" if manifest else "0"],
                                 capture_output=True, text=True, cwd=ROOT)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            print(f"\n{a.suffix[1:]} -> {to}{'' if manifest else ', no manifest'}: process {wall:.3f} s wall, "
                  f"{cpu:.3f} s CPU (user {r1.ru_utime - r0.ru_utime:.3f}, sys {r1.ru_stime - r0.ru_stime:.3f})")
            print(f"  {'phase':<44}{'wall s':>8}{'cpu s':>8}{'calls':>7}")
            for line in out.stdout.splitlines():
                if line.startswith("PHASE "):
                    name, w, c, n = line[6:].split("|")
                    print(f"  {name:<44}{float(w):8.3f}{float(c):8.3f}{int(n):>7}")


def params_per_layer() -> int:
    return 2 * D + D * 3 * D + 3 * D + D * D + D + 2 * D + D * 4 * D + 4 * D + 4 * D * D + D


def run(cmd: list[str], out: Path | None) -> tuple[float, float, int, float]:
    """Wall seconds, CPU seconds (user + sys), peak RSS (bytes) and the seconds convert() itself
    took (0 when the step does not report them) of one fresh process."""
    if out is not None and out.exists():
        out.unlink()
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"step failed: {' '.join(cmd)}\n{proc.stderr}")
    said = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.startswith(("PEAK ", "CONVERT ")))
    return wall, cpu, int(said.get("PEAK", 0)) * 1024, float(said.get("CONVERT", 0))


def step(name: str, src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-c", f"{STEPS[name]}\n{PEAK}", str(src), str(dst)]


def rounds(steps: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, list[tuple[float, float, int, float]]]:
    """Run every step once per round, interleaved (so a busy spell hits all steps alike), starting
    each round one step later (so no step always follows the same one)."""
    runs: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(repeat):
        for name in order[r % len(order):] + order[:r % len(order)]:   # each step leads a round in turn
            cmd, out = steps[name]
            runs[name].append(run(cmd, out))
    return runs


def summary(rs: list[tuple[float, float, int, float]]) -> tuple[float, float, float, float, int, float]:
    """Best, median and worst wall time, best CPU time, highest peak RSS, best convert() time."""
    walls = sorted(r[0] for r in rs)
    return walls[0], statistics.median(walls), walls[-1], min(r[1] for r in rs), max(r[2] for r in rs), min(r[3] for r in rs)


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


def offsets(src: Path, work: Path, repeat: int) -> None:
    """copy_file_range of the checkpoint at equal and shifted offsets (source, destination)."""
    size = src.stat().st_size
    # (source offset, destination offset): fastest when both start page-aligned; 64 KiB apart but
    # unaligned is close; offsets that differ modulo a page are the slowest.
    shifts = [(0, 0), (64, 0), (0, 64), (4096, 0), (32768, 0), (100_000, 100_000 - 4096),
              (100_000, 100_000 - 12288), (100_000, 0), (65536, 0), (100_000, 100_000 - 65536)]
    n = size - 100_000
    dst = work / "shifted.bin"
    runs: dict[tuple[int, int], list[tuple[float, float]]] = {s: [] for s in shifts}
    for _ in range(repeat):
        for s_src, s_dst in shifts:
            dst.unlink(missing_ok=True)
            os.sync()
            fi, fo = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fo, b"\0" * s_dst)
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                at, left = s_src, n
                while left:
                    k = os.copy_file_range(fi, fo, min(left, 1 << 30), at)
                    at, left = at + k, left - k
                wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            finally:
                os.close(fi)
                os.close(fo)
            runs[(s_src, s_dst)].append((wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))
    dst.unlink(missing_ok=True)
    print(f"\ncopy_file_range of {n / 1e9:.2f} GB, {repeat} interleaved rounds; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'source +':>10}{'dest +':>9}{'differ mod 4K':>15}{'mod 64K':>9}{'best s':>8}{'median':>8}{'cpu s':>7}")
    for (s_src, s_dst), rs in runs.items():
        walls = sorted(r[0] for r in rs)
        print(f"{s_src:>10}{s_dst:>9}{(s_src - s_dst) % 4096:>15}{(s_src - s_dst) % 65536:>9}{walls[0]:8.3f}{statistics.median(walls):8.3f}{min(r[1] for r in rs):7.3f}")


def pieces(src: Path, work: Path, repeat: int) -> None:
    """The whole file copied at equal offsets (destination = source), in one call, in 4 MiB pieces
    (every call starts 64 KiB-aligned) and in pieces cut where the checkpoint's tensors start and
    end (as a conversion's per-tensor copies are): the same bytes, only the calls' boundaries differ."""
    sys.path.insert(0, str(ROOT))
    import modelport

    size = src.stat().st_size
    with modelport.open(src) as source:
        spans = sorted({(sp.offset, sp.nbytes) for sp in map(source.span, source.names()) if sp is not None})
    cuts = sorted({0, size, *(o for o, _ in spans), *(o + n for o, n in spans)})
    plans = {"one call": [(0, size)],
             "4 MiB pieces": [(o, min(4 << 20, size - o)) for o in range(0, size, 4 << 20)],
             "tensor bounds": list(zip(cuts, (b - a for a, b in zip(cuts, cuts[1:]))))}
    dst = work / "pieces.bin"
    runs: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(repeat):
        for name, plan in plans.items():
            dst.unlink(missing_ok=True)
            os.sync()
            fi, fo = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                t0 = time.perf_counter()
                for at, left in plan:
                    while left:
                        k = os.copy_file_range(fi, fo, min(left, 1 << 30), at)
                        at, left = at + k, left - k
                runs[name].append(time.perf_counter() - t0)
            finally:
                os.close(fi)
                os.close(fo)
    dst.unlink(missing_ok=True)
    print(f"\ncopy_file_range of {size / 1e9:.2f} GB at equal offsets, {repeat} interleaved rounds")
    print(f"{'pieces':<16}{'calls':>7}{'best s':>8}{'median':>8}")
    for name, walls in runs.items():
        print(f"{name:<16}{len(plans[name]):>7}{min(walls):8.3f}{statistics.median(walls):8.3f}")


def manifest_cost(src: Path, st: Path, back: Path, copy: Path, size: int, repeat: int) -> None:
    """cp, and each direction with the manifest (the default) and without, interleaved; the ratios to cp's
    best (targets: with the manifest <= 2.5 x cp, without <= 1.6 x cp)."""
    timed = rounds({
        "cp": (["cp", str(src), str(copy)], copy),
        "pt -> safetensors": (step("pt -> safetensors", src, st), st),
        "pt -> safetensors, no manifest": (step("pt -> safetensors, no manifest", src, st), st),
        "safetensors -> pt": (step("safetensors -> pt", st, back), back),
        "safetensors -> pt, no manifest": (step("safetensors -> pt, no manifest", st, back), back),
    }, repeat)
    rows = [(name, *summary(timed[name])) for name in timed]
    cp_wall, cp_med, cp_cpu = rows[0][1], rows[0][2], rows[0][4]
    print(f"\ncheckpoint: {size / 1e9:.3f} GB; {repeat} interleaved rounds; load average now: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'step':<32}{'best s':>8}{'median':>8}{'x cp':>7}{'med x':>7}{'cpu s':>7}{'x cp':>6}")
    for name, best, med, _worst, cpu, _peak, _conv in rows:
        print(f"{name:<32}{best:8.3f}{med:8.3f}{best / cp_wall:7.2f}{med / cp_med:7.2f}{cpu:7.3f}{cpu / cp_cpu:6.2f}")
    print("x cp: best over cp's best; med x: median over cp's median; cpu: user + sys of the process (on a busy "
          "machine the wall ratios follow the CPU ratio)")
    print("targets: with the manifest (the default) <= 2.5 x cp, --no-manifest <= 1.6 x cp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="4 layers instead of 24 (a quick run)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the timed steps; the best wall time counts")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--no-reference", action="store_true", help="skip the torch.load reference steps")
    ap.add_argument("--offsets", action="store_true", help="only time copy_file_range at equal and shifted offsets")
    ap.add_argument("--pieces", action="store_true", help="only time copy_file_range of the file in pieces")
    ap.add_argument("--phases", action="store_true", help="only where one conversion's time goes, phase by phase")
    ap.add_argument("--manifest", action="store_true",
                    help="only cp and both directions with and without the manifest (what the manifest costs)")
    args = ap.parse_args()

    layers = 4 if args.small else 24
    # bytecode, as an installed package has it (PYTHONDONTWRITEBYTECODE would make every step compile)
    compileall.compile_dir(ROOT / "modelport", quiet=1)
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=args.dir))
    try:
        src = work / "model.pt"
        size = build(layers, src)
        if args.offsets:
            return offsets(src, work, args.repeat)
        if args.pieces:
            return pieces(src, work, args.repeat)
        st, back, copy = work / "model.safetensors", work / "back.pt", work / "copy.pt"
        run(step("pt -> safetensors", src, st), st)   # warm the page cache (and make the safetensors input)
        plain_st, plain_pt = work / "plain.safetensors", work / "plain.pt"
        if args.manifest:
            return manifest_cost(src, st, back, copy, size, args.repeat)
        if args.phases:
            return phases(src, st, back)
        timed = rounds({
            "cp": (["cp", str(src), str(copy)], copy),
            "pt -> safetensors": (step("pt -> safetensors", src, st), st),
            "pt -> safetensors, no align": (step("pt -> safetensors, no align", src, plain_st), plain_st),
            "safetensors -> pt": (step("safetensors -> pt", st, back), back),
            "safetensors -> pt, no align": (step("safetensors -> pt, no align", st, plain_pt), plain_pt),
            "safetensors -> pt, no CRC": (step("safetensors -> pt, no CRC", st, copy_pt := work / "nocrc.pt"), copy_pt),
            "pt -> safetensors, no manifest": (step("pt -> safetensors, no manifest", src, st), st),
            "safetensors -> pt, no manifest": (step("safetensors -> pt, no manifest", st, back), back),
        }, args.repeat)
        rows = [(name, *summary(timed[name])) for name in timed]
        copy.unlink()
        check(back, st)
        check(plain_pt, plain_st)
        padding = [(st.name, st.stat().st_size - plain_st.stat().st_size), (back.name, back.stat().st_size - plain_pt.stat().st_size)]
        if not args.no_reference:
            ref_st, ref_pt = work / "ref.safetensors", work / "ref.pt"
            ref = rounds({"torch.load + save_file": (step("torch.load + save_file", src, ref_st), ref_st),
                          "load_file + torch.save": (step("load_file + torch.save", ref_st, ref_pt), ref_pt)}, 1)
            rows += [(name, *summary(ref[name])) for name in ref]
            ref_st.unlink()
            ref_pt.unlink()
        cp_wall, cp_cpu = rows[0][1], rows[0][4]
        print(f"\ncheckpoint: {size / 1e9:.3f} GB, {layers} layers; {args.repeat} interleaved rounds (reference steps: 1 run)")
        print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{'step':<29}{'best s':>8}{'median':>8}{'worst':>8}{'x cp':>7}{'cpu s':>7}{'x cp':>6}"
              f"{'convert()':>10}{'x cp':>6}{'peak RSS MB':>13}{'RSS/ckpt':>10}")
        for name, best, med, worst, cpu, peak, conv in rows:
            rss = f"{peak / 1e6:13.1f}{peak / size:10.3f}" if peak else f"{'-':>13}{'-':>10}"
            inner = f"{conv:10.3f}{conv / cp_wall:6.2f}" if conv else f"{'-':>10}{'-':>6}"
            print(f"{name:<29}{best:8.3f}{med:8.3f}{worst:8.3f}{best / cp_wall:7.2f}{cpu:7.3f}{cpu / cp_cpu:6.2f}{inner}{rss}")
        print("x cp: best over cp's best (wall), CPU over cp's CPU; convert(): the call alone, without interpreter start and imports")
        print("targets: pt -> safetensors <= 1.5 x cp, safetensors -> pt <= 1.2 x cp, peak RSS <= 0.05 x checkpoint")
        for fname, extra in padding:
            print(f"alignment padding in {fname}: {extra} bytes ({extra / size * 100:.4f} % of the checkpoint)")
        peaks = {name: peak for name, _, _, _, _, peak, _ in rows}
        for p in (st, back, plain_st, plain_pt, copy_pt):
            p.unlink(missing_ok=True)
        src.unlink()

        # 4x the bytes, same largest tensor (wte): more layers.
        embed = (VOCAB + POS) * D
        total = embed + layers * params_per_layer() + 2 * D
        big_layers = round((4 * total - embed - 2 * D) / params_per_layer())
        big = work / "big.pt"
        big_size = build(big_layers, big)
        big_timed = rounds({"pt -> safetensors": (step("pt -> safetensors", big, st), st),
                            "safetensors -> pt": (step("safetensors -> pt", st, back), back)}, 1)
        big_rows = [(name, *summary(big_timed[name])) for name in big_timed]
        check(back, st)
        print(f"\n4x checkpoint: {big_size / 1e9:.3f} GB ({big_size / size:.2f}x), {big_layers} layers, same largest tensor")
        print(f"{'step':<24}{'wall s':>9}{'peak RSS MB':>13}{'extra vs 1x MB':>16}")
        for name, wall, _, _, _, peak, _ in big_rows:
            print(f"{name:<24}{wall:9.3f}{peak / 1e6:13.1f}{(peak - peaks[name]) / 1e6:16.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
