"""Signals at seeded moments into each writer: SIGINT, SIGTERM and SIGHUP leave nothing behind
(exit 130); kill -9 leaves no destination (its temporary is for stale-temp cleaning to remove)."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from .hostile import ROOT, state_dict_pickle, tensor_call, write_pt_zip, write_safetensors

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP, "KILL": signal.SIGKILL}
WRITERS = ("pt", "safetensors", "hf", "t7", "meta")


def sources(work: Path, tensors: int = 6000) -> dict[str, Path]:
    """A many-tensor safetensors file (per-tensor work makes writes last long enough to interrupt)
    and a many-layer Meta Llama directory."""
    work.mkdir(parents=True, exist_ok=True)
    header, off = {}, 0
    for i in range(tensors):
        header[f"layers.{i}.weight"] = {"dtype": "F32", "shape": [16, 16], "data_offsets": [off, off + 1024]}
        off += 1024
    big = write_safetensors(work / "big.safetensors", header, os.urandom(off))
    (work / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2}))
    meta = work / "meta"
    meta.mkdir(exist_ok=True)
    layers = max(1, tensors // 10)
    (meta / "params.json").write_text(json.dumps({"dim": 4, "n_layers": layers, "n_heads": 2, "vocab_size": 6, "multiple_of": 2}))
    shapes = {"tok_embeddings.weight": (6, 4), "norm.weight": (4,), "output.weight": (6, 4)}
    for i in range(layers):
        for w in ("wq", "wk", "wv", "wo"):
            shapes[f"layers.{i}.attention.{w}.weight"] = (4, 4)
        shapes[f"layers.{i}.feed_forward.w1.weight"] = (10, 4)
        shapes[f"layers.{i}.feed_forward.w2.weight"] = (4, 10)
        shapes[f"layers.{i}.feed_forward.w3.weight"] = (10, 4)
        shapes[f"layers.{i}.attention_norm.weight"] = (4,)
        shapes[f"layers.{i}.ffn_norm.weight"] = (4,)
    calls, storages = {}, {}
    rng = random.Random(0)
    for k, (name, shape) in enumerate(shapes.items()):
        numel = shape[0] * (shape[1] if len(shape) > 1 else 1)
        storages[str(k)] = struct.pack(f"<{numel}f", *(rng.uniform(-1, 1) for _ in range(numel)))
        calls[name] = tensor_call(str(k), numel, 0, shape, (shape[1], 1) if len(shape) > 1 else (1,))
    write_pt_zip(meta / "consolidated.00.pth", state_dict_pickle(calls), storages)
    return {"big": big, "meta": meta}


def interrupt(src: Path, dst: Path, to: str, sig: str, delay: float, timeout: float = 60.0) -> dict:
    """Start a conversion, wait for its temporary to appear, wait ``delay`` more, send ``sig``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "modelport", "convert", str(src), str(dst), "--to", to]
    if to == "hf" and src.suffix == ".safetensors":
        args += ["--config", str(src.parent / "config.json"), "--shard-size", "1MB"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    start = time.monotonic()
    landed = False
    while time.monotonic() - start < timeout and proc.poll() is None:
        if any(".modelport-" in n for n in os.listdir(dst.parent)):
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(SIGNALS[sig])
                landed = True
            break
        time.sleep(0.002)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    left = [n for n in os.listdir(dst.parent) if ".modelport-" in n]
    return {"rc": proc.returncode, "landed": landed, "dst_exists": dst.exists(), "temps": left,
            "stderr": err.decode("utf-8", "replace")}


def _complete(dst: Path, expect: int | None) -> bool:
    from modelport import formats
    from modelport.errors import ModelportError

    try:
        with formats.open(dst) as out:
            return expect is None or len(out.names()) + len(out.aliases()) >= expect
    except ModelportError:
        return False


def check(result: dict, sig: str, dst: Path, expect: int | None = None) -> str | None:
    """What is wrong with an interrupted conversion's outcome, or None. A destination may exist only
    when it is complete (the rename happened before the signal arrived)."""
    if result["dst_exists"]:           # renamed into place before the signal (even if it then hit the exit)
        if not _complete(dst, expect):
            return f"an incomplete destination after {sig}: {result}"
        return None if not result["temps"] else f"temporaries beside a finished destination: {result['temps']}"
    if not result["landed"]:
        return f"no destination and no signal, exit {result['rc']}: {result['stderr'][-300:]}"
    if sig == "KILL" and result["rc"] != -9:
        return f"exit {result['rc']} after KILL without a destination"
    if sig != "KILL":
        if result["rc"] != 130:
            return f"exit {result['rc']} after {sig}: {result['stderr'][-300:]}"
        if result["temps"]:
            return f"temporaries left after {sig}: {result['temps']}"
        if "Traceback" in result["stderr"]:
            return f"a traceback after {sig}"
    return None


def matrix(work: Path, seed: int, per_cell: int = 1, writers=WRITERS, sigs=tuple(SIGNALS)) -> tuple[int, int, list[str]]:
    """Every writer x signal, ``per_cell`` seeded moments each; (cases, signals that landed before the
    rename, problems)."""
    src = sources(work / "src")
    rng = random.Random(seed)
    cases = landed = 0
    problems: list[str] = []
    for to in writers:
        for sig in sigs:
            for k in range(per_cell):
                out = work / f"out-{to}-{sig}-{k}"
                out.mkdir(parents=True, exist_ok=True)
                dst = out / ("model" if to in ("hf", "meta") else f"model.{ {'pt': 'pt', 'safetensors': 'safetensors', 't7': 't7'}[to] }")
                result = interrupt(src["meta"] if to == "meta" else src["big"], dst, to, sig, rng.uniform(0.0, 0.4))
                cases += 1
                landed += result["landed"] and not result["dst_exists"]
                problem = check(result, sig, dst)
                if problem:
                    problems.append(f"{to}/{sig}: {problem}")
    return cases, landed, problems
