"""Soak run of hostile inputs against every reader and writer; prints the figures.

    PYTHONPATH=. python benchmarks/soak_hostile.py [--inputs 100000] [--seed 0] [--signals 2] [--keep DIR]

1. Seeded mutations (byte flips, interesting integers, truncations, insertions, JSON values replaced by
   NaN / Infinity / 5000-digit integers / deep nesting / lone surrogates / wrong types) of every format
   modelport reads: pt zip (torch's layout and modelport's own), the pickle inside it (zip and legacy),
   legacy pt, safetensors, t7 binary and ASCII, HF directories (config, index, shards, side files) and Meta
   directories (params.json, shards). Each input is opened, every tensor read, and converted to
   safetensors, in process with a 2 s alarm. Outcomes: refused (a ModelportError), valid (a complete
   read and conversion), other (anything else: a bug). Target: other == 0.
2. Malicious pickles (every protocol, several spellings) in every container, with a marker file that
   must never appear.
3. SIGINT / SIGTERM / SIGHUP / kill -9 at --signals seeded moments into each writer (pt, safetensors,
   hf, t7, meta): nothing left but kill -9's temporary, never a partial destination.
4. The defects' files through the real command line, each in a fresh process: exit 2, one line,
   its wall time and its own peak RSS (targets: 2 s and 300 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.adversarial import fuzz, hostile, signals  # noqa: E402


def phase_mutations(work: Path, n: int, seed: int, keep: Path | None) -> dict:
    start = time.monotonic()
    counts: Counter = Counter()
    step = 10_000
    for k in range(0, n, step):
        counts.update(fuzz.run(work / "fuzz", min(step, n - k), seed * 1_000_003 + k, keep_failures=keep))
        s = fuzz.summary(counts)
        print(f"  {s['inputs']:>7} inputs  refused {s['refused']}  valid {s['valid']}  other {s['other']}  "
              f"({time.monotonic() - start:.0f} s)", flush=True)
    s = fuzz.summary(counts)
    s["seconds"] = round(time.monotonic() - start, 1)
    s["by_reader"] = {}
    for (kind, outcome), v in sorted(counts.items()):
        s["by_reader"].setdefault(kind, Counter())[outcome if outcome in ("refused", "valid") else "other"] += v
    return s


def phase_pickles(work: Path) -> dict:
    from modelport import formats
    from modelport.errors import ModelportError

    work.mkdir(parents=True, exist_ok=True)
    marker = work / "MARKER"
    cases = refused = ran = 0
    other = []
    for name, pkl in hostile.payloads(marker).items():
        for label, writer in (("zip", hostile.write_pt_zip), ("legacy", hostile.write_pt_legacy)):
            path = writer(work / f"{name}-{label}.pt", pkl)
            cases += 1
            try:
                with formats.open(path):
                    other.append(f"{name}/{label}: opened")
            except ModelportError:
                refused += 1
            except Exception as exc:  # noqa: BLE001
                other.append(f"{name}/{label}: {type(exc).__name__}")
            ran += marker.exists()
    return {"cases": cases, "refused": refused, "marker_appeared": ran, "other": other}


def phase_signals(work: Path, seed: int, per_cell: int) -> dict:
    start = time.monotonic()
    cases, landed, problems = signals.matrix(work, seed, per_cell)
    return {"cases": cases, "landed_mid_write": landed, "problems": problems, "seconds": round(time.monotonic() - start, 1)}


def phase_cli(work: Path) -> dict:
    """The defects' files through the command line, measured one process at a time."""
    work.mkdir(parents=True, exist_ok=True)
    f16 = b"\0" * 16
    files = {
        "negative stride via BUILD": hostile.write_pt_zip(work / "b.pt", hostile.state_dict_pickle(
            {"w": hostile.tensor_call("0", 4, 0, (64,), (1,), build={"stride": (-16,)})}), {"0": f16}),
        "memo bomb": hostile.write_pt_zip(work / "m.pt", b"\x80\x02Nr\xff\xff\xff\xff."),
        "legacy memo bomb": hostile.write_pt_legacy(work / "ml.pt", b"\x80\x02Nr\xff\xff\xff\xff."),
        "stride-0 pt": hostile.write_pt_zip(work / "e.pt", hostile.state_dict_pickle(
            {"w": hostile.tensor_call("0", 1, 0, (500_000_000,), (0,))}), {"0": f16[:4]}),
        "stride-0 t7": hostile.t7_tensor_file(work / "e.t7", (500_000_000,), (0,), 1, 1),
        "rank 100000": hostile.write_pt_zip(work / "r.pt", hostile.state_dict_pickle(
            {"w": hostile.tensor_call("0", 4, 0, (1,) * 100_000, (1,) * 100_000)}), {"0": f16}),
        "deep JSON header": hostile.write_safetensors(work / "d.safetensors", "[" * 100_000 + "]" * 100_000),
        "5000-digit shape": hostile.write_safetensors(work / "i.safetensors", '{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}'),
    }
    rows = []
    for label, path in files.items():
        for args in (["inspect", path], ["convert", path, work / "out.safetensors"], ["diff", path, path]):
            r = hostile.run_measured(args, timeout=30)
            one_line = len(r["stderr"].strip().splitlines()) == 1 and "Traceback" not in r["stderr"]
            rows.append({"case": f"{label}: {args[0]}", "rc": r["rc"], "one_line": one_line, "wall": round(r["wall"], 2),
                         "rss_mb": round(r["rss"] / 2**20, 1)})
    return {"cases": len(rows), "clean": sum(r["rc"] == 2 and r["one_line"] for r in rows),
            "max_wall": max(r["wall"] for r in rows), "max_rss_mb": max(r["rss_mb"] for r in rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signals", type=int, default=2, help="seeded moments per writer x signal")
    ap.add_argument("--keep", type=Path, help="copy inputs with an 'other' outcome here")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    start = time.monotonic()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="modelport-soak-") as tmp:
        work = Path(tmp)
        print(f"1. {args.inputs} mutated inputs, seed {args.seed}", flush=True)
        figures["mutations"] = phase_mutations(work, args.inputs, args.seed, args.keep)
        figures["peak_rss_mb_in_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print("2. malicious pickles", flush=True)
        figures["pickles"] = phase_pickles(work / "pickles")
        print("3. signals into writers", flush=True)
        figures["signals"] = phase_signals(work / "signals", args.seed, args.signals)
        print("4. the defects' files through the command line", flush=True)
        figures["cli"] = phase_cli(work / "cli")
    figures["seconds"] = round(time.monotonic() - start, 1)
    m = figures["mutations"]
    print(f"\nmutated inputs: {m['inputs']} in {m['seconds']} s: refused {m['refused']}, valid {m['valid']}, other {m['other']}")
    for kind, c in m["by_reader"].items():
        print(f"  {kind:<12} {dict(c)}")
    for what, v in m["others"].items():
        print(f"  OTHER {v}x {what}")
    print(f"peak RSS of the in-process run: {figures['peak_rss_mb_in_process']} MB")
    p = figures["pickles"]
    print(f"malicious pickles: {p['cases']} cases, {p['refused']} refused, marker appeared {p['marker_appeared']} times, other {len(p['other'])}")
    s = figures["signals"]
    print(f"signals: {s['cases']} runs ({s['landed_mid_write']} landed mid-write), problems {len(s['problems'])}")
    for prob in s["problems"]:
        print(f"  PROBLEM {prob}")
    c = figures["cli"]
    print(f"command line: {c['cases']} runs, {c['clean']} one-line exit 2, slowest {c['max_wall']} s, largest {c['max_rss_mb']} MB")
    print(f"total {figures['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=dict))


if __name__ == "__main__":
    main()
