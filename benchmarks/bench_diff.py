"""Peak memory and time of `modelport diff A B`, tensor by tensor, with `import torch` beside it as the floor.

    python benchmarks/bench_diff.py A [B] [--repeat 3] [--cast-fp16]

A is any model modelport reads (e.g. a SmolLM2-135M directory, 540 MB); without B, a safetensors copy of A
is written to a temporary directory first (--cast-fp16: an fp16 copy, compared with --cast --atol 1e-3,
so every tensor differs a little and the differing ones are explained). Each step runs in a fresh
process under /usr/bin/time, whose small parent makes the reported peak RSS the child's own (a child
forked from a big process inherits its high-water mark). Prints best wall time, the highest peak RSS,
and its ratio to A's bytes (target for the 540 MB pair: peak <= 0.6 GB).
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
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def measured(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit code) of ``cmd`` under /usr/bin/time."""
    out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True, env=ENV)
    line = next(line for line in out.stderr.splitlines()[::-1] if line.startswith("TIME "))
    _, wall, kb = line.split()
    return float(wall), int(kb) * 1024, out.returncode


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path, nargs="?")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cast-fp16", action="store_true", help="B: an fp16 copy of A, diffed with --cast --atol 1e-3")
    args = ap.parse_args()
    if not shutil.which("time") and not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time")
    work = Path(tempfile.mkdtemp(prefix="bench-diff-"))
    try:
        b = args.b
        extra: list[str] = []
        if b is None:
            b = work / "copy.safetensors"
            dtype = ["--dtype", "fp16"] if args.cast_fp16 else []
            subprocess.run([sys.executable, "-m", "modelport", "convert", str(args.a), str(b), "--no-manifest", *dtype],
                           check=True, env=ENV, capture_output=True)
            extra = ["--cast", "--atol", "1e-3"] if args.cast_fp16 else []
        steps = {"import torch": [sys.executable, "-c", "import torch"],
                 "modelport diff": [sys.executable, "-m", "modelport", "diff", str(args.a), str(b), *extra]}
        runs: dict[str, list[tuple[float, int, int]]] = {n: [] for n in steps}
        for r in range(args.repeat):
            for name in list(steps)[r % 2:] + list(steps)[:r % 2]:
                runs[name].append(measured(steps[name]))
        size = size_of(args.a)
        print(f"A: {args.a} ({size / 1e6:.1f} MB); B: {b}{' ' + ' '.join(extra) if extra else ''}")
        print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
              f"{args.repeat} interleaved rounds")
        print(f"{'step':<16}{'best s':>8}{'peak RSS MB':>13}{'x A':>7}{'exit':>6}")
        for name, rs in runs.items():
            peak = max(r[1] for r in rs)
            print(f"{name:<16}{min(r[0] for r in rs):8.2f}{peak / 1e6:13.1f}{peak / size:7.2f}{rs[-1][2]:6d}")
        print("target: modelport diff of the 540 MB pair peaks at <= 600 MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
