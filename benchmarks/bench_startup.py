"""How long `modelport --help` takes against `python -c "import click"`, side by side in one run.

Each round runs, in fresh processes and in turn (the leader rotates, so a busy spell hits both alike):

  import click             python -c "import click": the floor of any click command
  modelport --help         python -m modelport --help (the package, its facade and the command's parser)
  import modelport         python -c "import modelport" (the facade alone)

and prints best and median wall time and the ratio of each best to `import click`'s best
(target: modelport --help <= 1.5 x). The lines of `python -X importtime` that the command adds over
click are listed with --why.

    python benchmarks/bench_startup.py [--repeat 15] [--why]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    "import click": [sys.executable, "-c", "import click"],
    "modelport --help": [sys.executable, "-m", "modelport", "--help"],
    "import modelport": [sys.executable, "-c", "import modelport"],
}


def once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="interleaved rounds; the best wall time counts")
    ap.add_argument("--why", action="store_true", help="list the slowest imports of `modelport --help`")
    args = ap.parse_args()
    compileall.compile_dir(ROOT / "modelport", quiet=1)      # bytecode, as an installed package has it
    names = list(STEPS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(once(STEPS[name]))
    floor = min(times["import click"])
    print(f"{args.repeat} interleaved rounds; load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'step':<20}{'best ms':>9}{'median':>9}{'x click':>9}")
    for name in names:
        best = min(times[name])
        print(f"{name:<20}{best * 1e3:9.1f}{statistics.median(times[name]) * 1e3:9.1f}{best / floor:9.2f}")
    print("target: modelport --help <= 1.5 x import click")
    if args.why:
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "modelport", "--help"], capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stderr
        rows = [line.split("|") for line in out.splitlines() if line.startswith("import time:") and "self" not in line]
        rows = sorted(((int(c), n.rstrip()) for _, c, n in rows), reverse=True)[:15]
        for cumulative, name in rows:
            print(f"{cumulative / 1e3:9.1f} ms cumulative  {name}")


if __name__ == "__main__":
    main()
