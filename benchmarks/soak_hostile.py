"""Soak run of hostile inputs against every reader and writer; prints the figures.

    PYTHONPATH=. python benchmarks/soak_hostile.py [--inputs 100000] [--seed 0] [--signals 2] [--keep DIR]

1. Seeded mutations (byte flips, interesting integers, truncations, insertions, JSON values replaced by
   NaN / Infinity / 5000-digit integers / deep nesting / lone surrogates / wrong types) of every format
   modelport reads: pt zip (torch's layout and modelport's own), the pickle inside it (zip and legacy),
   legacy pt, safetensors, t7 binary and ASCII, HF directories (config, index, shards, side files), Meta
   directories (params.json, shards), ONNX protobufs (bytes, and structure: dims, data types, values,
   external data, metadata of the wrong type), TorchScript archives (bytes, members, metadata, storages,
   code) and conversion manifests (bytes, JSON values, structure). Each model input is opened through
   ``modelport.formats.open``, every tensor read, and converted to safetensors; each manifest goes through
   ``modelport inspect`` (of the model beside it) and ``modelport verify`` in process. A 2 s alarm per
   input; each block of 5,000 inputs runs in its own forked process (a crash there is counted, not
   fatal). Outcomes: refused (a ModelportError / exit 2 in one line), valid (a complete read and
   conversion / exit 0 or 1), other (anything else: a bug; "hang" when past 2 s). Targets: other == 0,
   peak RSS of any one input under 300 MB (measured per input from /proc: VmHWM reset before it).
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
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.adversarial import fuzz, hostile, signals  # noqa: E402


def _block(work: Path, n: int, seed: int, keep: Path | None) -> tuple[Counter, dict]:
    """One block of inputs in a forked child: its counts and per-kind RSS peaks, or a crash counted."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: run, report through the pipe, leave at once
        os.close(r)
        code = 0
        try:
            peaks: dict = {}
            counts = fuzz.run(work, n, seed, keep_failures=keep, peaks=peaks)
            payload = json.dumps({"counts": [[k, o, v] for (k, o), v in counts.items()], "peaks": peaks})
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as an outcome
            payload = json.dumps({"counts": [["(block)", f"other:{type(exc).__name__}: {str(exc)[:200]}", 1]],
                                  "peaks": {}})
            code = 1
        with os.fdopen(w, "w") as f:
            f.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return Counter({("(block)", f"other:crashed ({'signal %d' % os.WTERMSIG(status) if os.WIFSIGNALED(status) else status})"): 1}), {}
    data = json.loads(text)
    return Counter({(k, o): v for k, o, v in data["counts"]}), {k: tuple(v) for k, v in data["peaks"].items()}


def phase_mutations(work: Path, n: int, seed: int, keep: Path | None) -> dict:
    start = time.monotonic()
    counts: Counter = Counter()
    peaks: dict = {}
    step = 5_000
    for k in range(0, n, step):
        block, block_peaks = _block(work / "fuzz", min(step, n - k), seed * 1_000_003 + k, keep)
        counts.update(block)
        for kind, (peak, growth) in block_peaks.items():
            old = peaks.get(kind, (0, 0))
            peaks[kind] = (max(old[0], peak), max(old[1], growth))
        s = fuzz.summary(counts)
        print(f"  {s['inputs']:>7} inputs  refused {s['refused']}  valid {s['valid']}  other {s['other']}  "
              f"({time.monotonic() - start:.0f} s)", flush=True)
    s = fuzz.summary(counts)
    s["seconds"] = round(time.monotonic() - start, 1)
    s["hangs"] = sum(v for (k, o), v in counts.items() if o == "other:hang")
    s["peak_rss_mb"] = {kind: {"peak": round(p / 2**20, 1), "growth": round(g / 2**20, 1)}
                        for kind, (p, g) in sorted(peaks.items())}
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


def _bounds_commands(work: Path) -> list[tuple[str, list]]:
    """Sizes a config or a graph file claims: a million layers over three blocks, parity's sizes, an input
    shape of [40000, 40000] in ONNX metadata, metadata and initializers of the wrong type."""
    from onnx import TensorProto, helper

    from tests.parity import faults

    state, cfg = faults.gpt2_state(seed=3)
    layers = faults.write_dir(work / "layers", state, {**cfg, "n_layer": 1_000_000})
    good = faults.write_dir(work / "gpt2", state, cfg)

    def graph(name, meta=None, dims=(4,), values=(1.0, 2.0, 3.0, 4.0)):
        b = TensorProto(name="b", data_type=TensorProto.FLOAT, dims=list(dims), float_data=list(values))
        g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [b])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        for k, v in (meta or {}).items():
            m.metadata_props.add(key=k, value=v)
        (work / name).write_bytes(m.SerializeToString())
        return work / name

    big = graph("big.onnx", {"modelport.kind": "tensor", "modelport.inputs": json.dumps(
        [{"name": "x", "dtype": "float32", "shape": [40000, 40000]}])})
    return [("n_layer 1000000: inspect --run", ["inspect", layers, "--run"]),
            ("n_layer 1000000: parity", ["parity", layers, layers, "--engine", "reference"]),
            ("n_layer 1000000: transformers parity", ["parity", layers, layers, "--engine", "transformers"]),
            ("parity --seq-len 1000000000", ["parity", good, good, "--engine", "reference", "--seq-len", "1000000000"]),
            ("parity --batch 1000000000", ["parity", good, good, "--engine", "reference", "--batch", "1000000000"]),
            ("parity --new-tokens 1000000000", ["parity", good, good, "--engine", "reference", "--new-tokens",
                                                "1000000000"]),
            ("ONNX input [40000, 40000]: parity", ["parity", big, big]),
            ("ONNX aliases [1,2,3]: inspect", ["inspect", graph("a.onnx", {"modelport.aliases": "[1,2,3]"})]),
            ("ONNX vocab_size lots: parity", ["parity", *[graph("v.onnx", {"modelport.vocab_size": "lots"})] * 2]),
            ("ONNX dims [-2, 2]: convert", ["convert", graph("n.onnx", dims=(-2, 2)), work / "n.safetensors"]),
            ("ONNX float_data short: convert", ["convert", graph("s.onnx", dims=(4, 4)), work / "s.safetensors"])]


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
    commands = [(f"{label}: {args[0]}", args) for label, path in files.items()
                for args in (["inspect", path], ["convert", path, work / "out.safetensors"], ["diff", path, path])]
    commands += _bounds_commands(work)
    rows = []
    for label, args in commands:
        r = hostile.run_measured(args, timeout=120)     # a shared, loaded machine: interpreter and torch start included
        one_line = len(r["stderr"].strip().splitlines()) == 1 and "Traceback" not in r["stderr"]
        rows.append({"case": label, "rc": r["rc"], "one_line": one_line, "wall": round(r["wall"], 2),
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
    for what, v in sorted(m["others"].items(), key=lambda kv: -kv[1]):
        print(f"  OTHER {v}x {what}")
    print(f"hangs (past the 2 s limit): {m['hangs']}")
    print("peak RSS of one input (MB; its process's memory before it included) and its growth over that:")
    for kind, p in m["peak_rss_mb"].items():
        print(f"  {kind:<12} peak {p['peak']:>6}  growth {p['growth']:>6}")
    print(f"peak RSS of the soak's own process: {figures['peak_rss_mb_in_process']} MB")
    p = figures["pickles"]
    print(f"malicious pickles: {p['cases']} cases, {p['refused']} refused, marker appeared {p['marker_appeared']} times, other {len(p['other'])}")
    s = figures["signals"]
    print(f"signals: {s['cases']} runs ({s['landed_mid_write']} landed mid-write), problems {len(s['problems'])}")
    for prob in s["problems"]:
        print(f"  PROBLEM {prob}")
    c = figures["cli"]
    print(f"command line: {c['cases']} runs, {c['clean']} one-line exit 2, slowest {c['max_wall']} s, largest {c['max_rss_mb']} MB")
    for row in c["rows"]:
        if row["rc"] != 2 or not row["one_line"]:
            print(f"  NOT CLEAN {row}")
    print(f"total {figures['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=dict))


if __name__ == "__main__":
    main()
