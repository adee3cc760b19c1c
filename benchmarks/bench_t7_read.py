"""Reading .t7 files: binary speed against numpy.fromfile, and ASCII parsing time against size.

    PYTHONPATH=. python benchmarks/bench_t7_read.py [--mb 100] [--repeat 5]   (from the repository root)

1. A 100 MB torch.FloatTensor .t7 (binary). Side by side, best of --repeat, page cache warm for
   both: numpy.fromfile of the tensor's bytes, and modelport's read_t7 with every byte brought into
   memory (a copy of the mapped array, so nothing is left lazily unread). Target: ratio >= 0.5.
2. ASCII files at 1x and 4x size, two shapes: one big FloatTensor (numbers) and a table of many
   small tensors (objects). Linear parsing shows a 4x/1x time ratio near 4 (quadratic: near 16).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from modelport.formats.base import ReadOptions
from modelport.formats.t7 import T7Source
from modelport.t7.objects import LuaTable, T7Storage, T7Tensor
from modelport.t7.reader import read_t7
from modelport.t7.writer import write_t7


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def float_tensor(n: int, seed: int = 0) -> T7Tensor:
    data = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    return T7Tensor("torch.FloatTensor", "float32", (n,), (1,), 0, T7Storage("torch.FloatStorage", "float32", data))


def binary(tmp: Path, mb: int, repeat: int) -> None:
    n = mb * (1 << 20) // 4
    path = tmp / "big.t7"
    write_t7(float_tensor(n), path)
    header = path.stat().st_size - 4 * n

    def with_numpy():
        a = np.fromfile(path, dtype="<f4", offset=header)
        assert a.size == n

    def with_modelport():
        a = np.array(read_t7(path).root.numpy())          # every byte read into memory
        assert a.size == n

    def with_adapter():
        src = T7Source(path, ReadOptions())
        a = np.frombuffer(src.read_bytes("tensor"), dtype=np.uint8).copy()   # into memory, as above
        assert a.size == 4 * n

    with_numpy()
    with_modelport()                                      # warm the page cache for both
    t_np = best(with_numpy, repeat)
    t_mp = best(with_modelport, repeat)
    t_ad = best(with_adapter, repeat)
    t_lazy = best(lambda: read_t7(path), repeat)
    size = path.stat().st_size / 1e6
    print(f"binary FloatTensor .t7, {size:.1f} MB (best of {repeat})")
    print(f"  numpy.fromfile                 {t_np * 1e3:8.1f} ms  {size / t_np:8.0f} MB/s")
    print(f"  read_t7 + copy into memory     {t_mp * 1e3:8.1f} ms  {size / t_mp:8.0f} MB/s")
    print(f"  T7Source open + read_bytes     {t_ad * 1e3:8.1f} ms  {size / t_ad:8.0f} MB/s")
    print(f"  read_t7 alone (mapped, lazy)   {t_lazy * 1e3:8.1f} ms")
    print(f"  speed ratio modelport/numpy: {t_np / t_mp:.2f}x (target >= 0.5x)")


def ascii_scaling(tmp: Path, repeat: int) -> None:
    print("ASCII parsing (best of %d)" % repeat)
    for label, make in [
        ("one FloatTensor, 250k values", lambda k: float_tensor(250_000 * k)),
        ("table of 5k small tensors", lambda k: LuaTable({f"t{i}".encode(): float_tensor(3, i) for i in range(5_000 * k)})),
    ]:
        times = {}
        for k in (1, 4):
            path = tmp / f"a{k}.asc"
            write_t7(make(k), path, mode="ascii")
            times[k] = best(lambda: read_t7(path), repeat)
            print(f"  {label:30s} x{k}: {path.stat().st_size / 1e6:6.1f} MB  {times[k] * 1e3:8.1f} ms")
        print(f"  {label:30s} time ratio 4x/1x = {times[4] / times[1]:.2f} (linear: ~4, quadratic: ~16)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        binary(Path(d), args.mb, args.repeat)
        ascii_scaling(Path(d), max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
