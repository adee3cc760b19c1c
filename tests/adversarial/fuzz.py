"""Seeded mutation of every format modelport reads, and of its manifests, run in process: each input
ends as a clean ``ModelportError`` ("refused"), a complete valid read and conversion ("valid"), or
anything else ("other": a bug). ONNX, TorchScript and manifest seeds and mutations live in
:mod:`.fuzz_graphs`; manifests are exercised through ``inspect`` and ``verify`` on the command line. Used by tests/adversarial/test_mutations.py (a few hundred inputs) and
benchmarks/soak_hostile.py (100k and more)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import traceback
import zipfile
from collections import Counter
from pathlib import Path

from . import fuzz_graphs
from .hostile import good_pt_zip, mutate, mutate_json, state_dict_pickle, tensor_call, write_pt_legacy, write_pt_zip

TIME_LIMIT = 2.0


class Hang(Exception):
    """An input took longer than TIME_LIMIT seconds."""


def _alarm(signum, frame):
    raise Hang(f"more than {TIME_LIMIT} s")


def seeds(work: Path, kinds=None) -> dict[str, Path]:
    """One valid input per reader (and per variant of it), written with modelport's own writers; the ONNX,
    TorchScript and manifest seeds only when ``kinds`` (None: all) names them."""
    from modelport import formats
    from modelport.formats.base import Options
    from modelport.formats.pt import write_pt
    from modelport.formats.safetensors import write_file

    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    good = good_pt_zip(work / "good-zip.pt", seed=1, n=4)
    out["pt-zip"] = good
    out["pt-own"] = work / "own.pt"
    with formats.open(good) as src:
        write_pt(src, out["pt-own"], crc32=False)
        write_file(src, work / "good.safetensors")
        formats.get("t7").write(src, work / "good.t7", Options())
        formats.get("t7").write(src, work / "good-ascii.t7", Options(t7_mode="ascii"))
    out["safetensors"] = work / "good.safetensors"
    out["t7"] = work / "good.t7"
    out["t7-ascii"] = work / "good-ascii.t7"
    zr = zipfile.ZipFile(good)
    pkl = zr.read("archive/data.pkl")
    storages = {n.rsplit("/", 1)[1]: zr.read(n) for n in zr.namelist() if "/data/" in n}
    out["pt-legacy"] = write_pt_legacy(work / "legacy.pt", pkl, storages)
    (work / "data.pkl").write_bytes(pkl)
    out["pickle"] = work / "data.pkl"          # mutated, then put into a zip around intact storages
    hf = work / "hf"
    hf.mkdir(exist_ok=True)
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 37}))
    with formats.open(good) as src:
        names = src.names()
        write_file(src, hf / "model-00001-of-00002.safetensors", names[:2])
        write_file(src, hf / "model-00002-of-00002.safetensors", names[2:])
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": {n: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, n in enumerate(names)}}))
    (hf / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}))
    out["hf"] = hf
    meta = work / "meta"
    meta.mkdir(exist_ok=True)
    (meta / "params.json").write_text(json.dumps({"dim": 4, "n_layers": 1, "n_heads": 2, "vocab_size": 6, "multiple_of": 4, "norm_eps": 1e-5}))
    rng = random.Random(3)
    shapes = {"tok_embeddings.weight": (6, 4), "layers.0.attention.wq.weight": (4, 4), "layers.0.attention_norm.weight": (4,),
              "norm.weight": (4,), "output.weight": (6, 4)}
    tensors, st = {}, {}
    for i, (n, shape) in enumerate(shapes.items()):
        numel = shape[0] * (shape[1] if len(shape) > 1 else 1)
        st[str(i)] = struct.pack(f"<{numel}f", *(rng.uniform(-1, 1) for _ in range(numel)))
        tensors[n] = tensor_call(str(i), numel, 0, shape, (shape[1], 1) if len(shape) > 1 else (1,))
    write_pt_zip(meta / "consolidated.00.pth", state_dict_pickle(tensors), st)
    out["meta"] = meta
    wanted = set(GRAPH_VARIANTS) if kinds is None else set(kinds) & set(GRAPH_VARIANTS)
    if "onnx" in wanted:
        out["onnx"] = fuzz_graphs.onnx_seed(work / "onnx")
    if "torchscript" in wanted:
        out["torchscript"] = fuzz_graphs.torchscript_seed(work / "torchscript")
    if "manifest" in wanted:
        out["manifest"] = fuzz_graphs.manifest_seed(work / "manifest", good)
    # First uses import what they need (seconds): done here, without the time limit of a case (an alarm
    # raised inside an import would leave a module half-imported for the rest of the process).
    for kind in sorted(wanted):
        if kind == "manifest":
            fuzz_graphs.exercise_manifest(out[kind])
            continue
        with formats.open(out[kind], kind) as src:
            for name in src.names():
                src.read_bytes(name)
    return out


GRAPH_VARIANTS = {"onnx": fuzz_graphs.onnx_variant, "torchscript": fuzz_graphs.torchscript_variant,
                  "manifest": fuzz_graphs.manifest_variant}


def _variant(kind: str, seed_path: Path, case: Path, rng: random.Random) -> tuple[Path, str | None]:
    """Write one mutated input for ``kind`` under ``case``; (path to open, format or None to detect)."""
    if case.exists():
        shutil.rmtree(case) if case.is_dir() else case.unlink()
    if kind in GRAPH_VARIANTS:
        return GRAPH_VARIANTS[kind](seed_path, case, rng)
    if kind == "pickle":
        pkl = mutate(seed_path.read_bytes(), rng)
        zr = zipfile.ZipFile(seed_path.parent / "good-zip.pt")
        storages = {n.rsplit("/", 1)[1]: zr.read(n) for n in zr.namelist() if "/data/" in n}
        writer = write_pt_zip if rng.random() < 0.5 else write_pt_legacy
        return writer(case, pkl, storages), "pt"
    if kind in ("hf", "meta"):
        shutil.copytree(seed_path, case)
        files = sorted(p for p in case.iterdir())
        target = rng.choice(files)
        if target.suffix == ".json" and rng.random() < 0.8:
            target.write_bytes(mutate_json(target.read_text(), rng))
        else:
            target.write_bytes(mutate(target.read_bytes(), rng))
        return case, kind
    data = seed_path.read_bytes()
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 5)):
        data = mutate(data, rng)
    case.write_bytes(data)
    fmt = {"pt-zip": "pt", "pt-own": "pt", "pt-legacy": "pt", "safetensors": "safetensors", "t7": "t7", "t7-ascii": "t7"}[kind]
    return case, (fmt if rng.random() < 0.5 else None)


def exercise(path: Path, fmt: str | None, out_dir: Path) -> str:
    """Open, read every tensor, and convert; 'refused', 'valid', or 'other:<what>'."""
    from modelport import formats
    from modelport.errors import ModelportError
    from modelport.formats.safetensors import write_file

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        if fmt == "manifest":
            return fuzz_graphs.exercise_manifest(path)
        with formats.open(path, fmt) as src:
            names = sorted(src.names())
            for name in names:
                info = src.info(name)
                data = src.read_bytes(name)
                if len(memoryview(data).cast("B")) != info.nbytes:
                    return f"other:wrong byte count for {name!r}"
            str(src.metadata), list(src.side_files), src.aliases()
            dst = out_dir / "out.safetensors"
            if dst.exists():
                dst.unlink()
            write_file(src, dst)
        with formats.open(dst) as again:
            if sorted(again.names()) != names:
                return "other:conversion lost tensors"
        return "valid"
    except ModelportError:
        return "refused"
    except Hang:
        return "other:hang"
    except MemoryError:
        return "other:MemoryError"
    except Exception as exc:   # noqa: BLE001 - anything else is what the fuzzing looks for
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return f"other:{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}: {str(exc)[:80]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:      # Linux: "5" resets the peak RSS (VmHWM)
            f.write("5")
    except OSError:
        pass


def _status(field: str) -> int:
    """VmHWM (peak RSS) or VmRSS of this process, in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(work: Path, n: int, seed: int, kinds: list[str] | None = None, keep_failures: Path | None = None,
        peaks: dict | None = None) -> Counter:
    """``n`` mutated inputs spread over every reader; a Counter of (kind, outcome). ``peaks``, when given,
    gets per kind the largest peak RSS of one case (bytes, the process's memory before it included) and
    the largest growth of one case over the RSS it started from: ``{kind: (peak, growth)}``."""
    base = seeds(work / "seeds", kinds)
    kinds = kinds or sorted(base)
    rng = random.Random(seed)
    counts: Counter = Counter()
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        case_rng = random.Random(rng.getrandbits(64))
        case = work / f"case-{kind}"
        path, fmt = _variant(kind, base[kind], case, case_rng)
        if peaks is not None:
            _reset_peak_rss()
            before = _status("VmRSS")
        outcome = exercise(path, fmt, out_dir)
        if peaks is not None:
            peak, growth = peaks.get(kind, (0, 0))
            now = _status("VmHWM")
            peaks[kind] = (max(peak, now), max(growth, now - before))
        counts[(kind, outcome if not outcome.startswith("other") else outcome)] += 1
        if outcome.startswith("other") and keep_failures is not None:
            keep_failures.mkdir(parents=True, exist_ok=True)
            dest = keep_failures / f"{kind}-{i}{'' if path.is_dir() else path.suffix}"
            shutil.copytree(path, dest) if path.is_dir() else shutil.copy(path, dest)
    return counts


def summary(counts: Counter) -> dict:
    total = sum(counts.values())
    refused = sum(v for (k, o), v in counts.items() if o == "refused")
    valid = sum(v for (k, o), v in counts.items() if o == "valid")
    others = {f"{k}: {o}": v for (k, o), v in counts.items() if o not in ("refused", "valid")}
    return {"inputs": total, "refused": refused, "valid": valid, "other": sum(others.values()), "others": others}


__all__ = ["exercise", "run", "seeds", "summary", "os"]
