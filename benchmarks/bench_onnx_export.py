"""ONNX export of a decoder: modelport's builder against its torch.onnx path and other tools, side by side.

Exports one Hugging Face directory (``--model``, e.g. SmolLM2-135M; by default a GPT-2-small-shaped one
built here from a seeded generator; ``--llama1b DIR``: a Llama 3.2 1B-shaped one, fp32, random bytes, 4.9 GB,
written into DIR unless there) to ONNX fp32 opset 17, each tool in its own process:

    builder   python -m modelport convert DIR out.onnx --opset 17 --exporter builder --no-manifest
              (the graph built from the family record with a key/value cache, weights streamed)
    torch     python -m modelport convert DIR out.onnx --opset 17 --exporter torch --no-manifest
              (torch.onnx tracing; its own check against eager included; no cache)
    genai     onnxruntime-genai's model builder (-p fp32 -e cpu), when --genai-site names the
              site-packages of an environment that has onnxruntime-genai (it pins its own onnxruntime,
              so it lives in a side environment; it runs with this Python's torch and transformers)
    optimum   optimum-cli export onnx --task text-generation-with-past --opset 17, when --optimum names
              the optimum-cli of an environment with optimum-onnx (its own torch and transformers 4.x,
              which reads a transformers 5 config's ``rope_parameters`` as the default rope: it is given
              the same directory with ``rope_theta`` spelled out, the weights linked, not copied)

For each: wall time, peak RSS (the largest of the tool's processes, ru_maxrss), bytes written, whether
the graph loads and runs one step in onnxruntime, and whether onnxruntime-genai generates from it (graphs
with genai_config.json). ``--tokenizer DIR`` gives the 1B-shaped Llama DIR's tokenizer files, which
onnxruntime-genai's builder insists on. A tool whose processes pass ``--rss-cap`` GB together (default 4: the machine is
shared) is stopped and reported as not fitting, with how far it got; the torch path is not started when
the checkpoint alone is past the cap (it holds the model and traces it). Graphs over 3 GB are not run in
onnxruntime or onnxruntime-genai (they would pass the cap).

``--greedy`` checks the builder's graph with its cache in three loaders against transformers' greedy (32
tokens): onnxruntime directly on three left-padded seeded prompts; optimum's ORTModelForCausalLM
(``--optimum-python``, the optimum environment's Python) on the same prompts through ``generate``; and
onnxruntime-genai (``--genai-python``) on the unpadded prompt.

``--llama7b DIR`` writes a 7B-shaped Llama (Llama 2 7B shapes, fp16, random bytes: 13.5 GB in
safetensors shards) into DIR unless there, then times ``cp -r`` of it against the builder's fp16 export
(with the cache, tensors in external data: past 2 GiB) and reports the builder's peak RSS.

Figures on a shared machine are noisy: compare ratios from one run.

Usage: python benchmarks/bench_onnx_export.py [--model DIR | --llama1b DIR] [--genai-site SITE]
       [--genai-python PY] [--optimum optimum-cli] [--optimum-python PY] [--greedy] [--rss-cap GB]
       [--llama7b DIR [--only-7b]] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_gpt2(dst: Path) -> None:
    import torch
    import transformers

    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(dst)


# runs argv in a new session and polls the RSS of all its processes: over the cap, the session is killed
_RUNNER = r"""
import json, os, resource, signal, subprocess, sys, time
cap = float(sys.argv[1])
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
def tree_rss():
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == p.pid:             # its session: the tool and every process it started
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total
killed, top = False, 0
while p.poll() is None:
    top = max(top, tree_rss())
    if top > cap:
        os.killpg(p.pid, signal.SIGKILL)
        killed = True
        break
    time.sleep(0.1)
out, err = p.communicate()
w = time.perf_counter() - t
print(json.dumps([w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, top, p.returncode, killed, err[-1500:]]))
"""


def measure(label: str, cmd: list[str], out: Path, env=None, cap_gb: float = 4.0) -> dict:
    # each command runs in a fresh child of a fresh python, so ru_maxrss is its own
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(cap_gb * 1e9), *cmd], capture_output=True, text=True,
                          env=env)
    wall, peak, tree, rc, killed, err = json.loads(proc.stdout.strip().splitlines()[-1])
    if killed:
        print(f"{label}: stopped after {wall:.0f} s, its processes past the {cap_gb:g} GB RSS cap", file=sys.stderr)
        return {"label": label, "ok": False, "why": f"past the {cap_gb:g} GB RSS cap after {wall:.0f} s (stopped)"}
    if rc != 0:
        print(f"{label} FAILED (exit {rc}):\n{err}", file=sys.stderr)
        return {"label": label, "ok": False, "why": f"failed (exit {rc})"}
    size = sum(p.stat().st_size for p in out.parent.iterdir()       # the graph and its external data, by either name
               if p.suffix in (".onnx", ".data") or p.name.endswith((".onnx.data", ".onnx_data")))
    return {"label": label, "ok": True, "wall": wall, "peak": peak, "tree": tree, "size": size, "out": out}


def runs_in_ort(path: Path, size: int) -> str:
    import numpy as np
    import onnxruntime as ort

    if size > 3e9:
        return f"not run ({size / 1e9:.1f} GB: past this shared machine's memory budget)"
    try:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        genai = path.parent / "genai_config.json"
        dec = json.loads(genai.read_text())["model"]["decoder"] if genai.exists() else {}
        for i in s.get_inputs():
            if i.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in i.type else np.float32
                heads = i.shape[1] if isinstance(i.shape[1], int) else dec["num_key_value_heads"]
                size = i.shape[3] if isinstance(i.shape[3], int) else dec["head_size"]
                feeds[i.name] = np.zeros((1, heads, 0, size), dtype=dtype)
            elif i.name in ("input_ids", "attention_mask", "position_ids"):
                feeds[i.name] = (np.arange(4, dtype=np.int64)[None] if i.name == "position_ids"
                                 else np.ones((1, 4), dtype=np.int64))
            else:
                return f"no: unknown input {i.name}"
        s.run(None, feeds)
        return "yes"
    except Exception as exc:  # onnxruntime's errors have no common base
        return f"no: {str(exc)[:60]}"


def runs_in_genai(directory: Path, python: str | None, size: int) -> str:
    if not (directory / "genai_config.json").exists():
        return "n/a (no genai_config.json)"
    if size > 3e9:
        return f"not run ({size / 1e9:.1f} GB: past this shared machine's memory budget)"
    if python is None:
        return "not tried (--genai-python)"
    script = ("import sys,numpy as np,onnxruntime_genai as og\nm=og.Model(sys.argv[1]);p=og.GeneratorParams(m)\n"
              "p.set_search_options(max_length=12,do_sample=False);g=og.Generator(m,p)\n"
              "g.append_tokens(np.array([[1,2,3,4]],dtype=np.int32))\nwhile not g.is_done(): g.generate_next_token()\n")
    p = subprocess.run([python, "-c", script, str(directory)], capture_output=True, text=True)
    return "yes" if p.returncode == 0 else f"no: {p.stderr.strip().splitlines()[-1][:60] if p.stderr.strip() else p.returncode}"


def prompts(vocab: int):
    """Three seeded prompts of 10 tokens, rows 1 and 2 left-padded by 4 and 2."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :2] = 0, 0
    ids[mask == 0] = 0
    return ids, mask


_REFERENCE: dict = {}


def reference_greedy(model_dir: Path, n: int = 32):
    """transformers' greedy tokens (recomputing the whole sequence each step) for :func:`prompts`."""
    import torch
    import transformers

    if model_dir not in _REFERENCE:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ids, mask = prompts(model.config.vocab_size)
        want, cur, m = [], ids, mask
        with torch.no_grad():
            for _ in range(n):
                pos = (m.cumsum(-1) - 1).clamp(min=0)
                nxt = model(input_ids=cur, attention_mask=m, position_ids=pos).logits[:, -1].argmax(-1)
                want.append(nxt)
                cur, m = torch.cat([cur, nxt[:, None]], 1), torch.cat([m, torch.ones_like(m[:, :1])], 1)
        _REFERENCE[model_dir] = (ids, mask, torch.stack(want, 1).numpy(), model.config.eos_token_id)
        del model
    return _REFERENCE[model_dir]


def _same(got, want, eos) -> int:
    """Rows of ``got`` equal to ``want`` up to and including ``want``'s first eos."""
    same = 0
    for g, w in zip(got, want):
        w = [int(t) for t in w]
        n = w.index(eos) + 1 if eos in w else len(w)
        same += [int(t) for t in g[:n]] == w[:n]
    return same


def greedy_check(model_dir: Path, graph: Path) -> str:
    import onnxruntime as ort

    from modelport.convert.onnx_builder.generate import greedy

    ids, mask, want, eos = reference_greedy(model_dir)
    got = greedy(ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]), ids.numpy(), mask.numpy(), 32)
    return f"onnxruntime with the cache: {_same(got, want, eos)}/3 left-padded rows equal transformers' greedy for 32 tokens"


_OPTIMUM = r"""
import json, sys, torch
from optimum.onnxruntime import ORTModelForCausalLM
m = ORTModelForCausalLM.from_pretrained(sys.argv[1], file_name=sys.argv[2], use_cache=True, use_io_binding=False,
                                        provider="CPUExecutionProvider")
ids, mask = torch.tensor(json.loads(sys.argv[3])), torch.tensor(json.loads(sys.argv[4]))
out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=32, do_sample=False, num_beams=1, pad_token_id=0)
print(json.dumps(out[:, ids.shape[1]:].tolist()))
"""


def optimum_check(model_dir: Path, graph: Path, python: str) -> str:
    """optimum's ORTModelForCausalLM runs the built graph (with config.json beside it, as optimum wants)."""
    ids, mask, want, eos = reference_greedy(model_dir)
    loader_dir = graph.parent.with_name(graph.parent.name + "-optimum-loader")
    shutil.rmtree(loader_dir, ignore_errors=True)
    loader_dir.mkdir()
    for f in graph.parent.iterdir():
        (loader_dir / f.name).symlink_to(f.resolve())
    (loader_dir / "config.json").write_text(json.dumps(legacy_config(model_dir)))
    p = subprocess.run([python, "-c", _OPTIMUM, str(loader_dir), graph.name, json.dumps(ids.tolist()),
                        json.dumps(mask.tolist())], capture_output=True, text=True)
    shutil.rmtree(loader_dir, ignore_errors=True)
    if p.returncode != 0:
        return f"optimum ORTModelForCausalLM: failed: {p.stderr.strip().splitlines()[-1][:200]}"
    got = json.loads(p.stdout.strip().splitlines()[-1])
    return (f"optimum ORTModelForCausalLM (cache, generate): {_same(got, want, eos)}/3 left-padded rows equal "
            "transformers' greedy for 32 tokens")


def genai_check(model_dir: Path, graph: Path, python: str) -> str:
    ids, mask, want, eos = reference_greedy(model_dir)
    prompt = ids[0].tolist()
    script = ("import sys,json,numpy as np,onnxruntime_genai as og\nm=og.Model(sys.argv[1]);p=og.GeneratorParams(m)\n"
              f"p.set_search_options(max_length={len(prompt) + 32},do_sample=False);g=og.Generator(m,p)\n"
              f"g.append_tokens(np.array([{prompt}],dtype=np.int32))\nwhile not g.is_done(): g.generate_next_token()\n"
              "print(json.dumps([int(t) for t in g.get_sequence(0)]))\n")
    p = subprocess.run([python, "-c", script, str(graph.parent)], capture_output=True, text=True)
    if p.returncode != 0:
        return f"onnxruntime-genai: failed: {p.stderr.strip().splitlines()[-1][:200]}"
    got = json.loads(p.stdout.strip().splitlines()[-1])[len(prompt):]
    return f"onnxruntime-genai: {_same([got], want[:1], eos)}/1 unpadded row equals transformers' greedy for 32 tokens"


def legacy_config(model_dir: Path) -> dict:
    """config.json with transformers 5's ``rope_parameters`` also spelled as 4.x's rope_theta / rope_scaling."""
    cfg = json.loads((model_dir / "config.json").read_text())
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict):
        cfg.setdefault("rope_theta", rope.get("rope_theta"))
        if rope.get("rope_type", "default") != "default":
            cfg.setdefault("rope_scaling", rope)
    if "dtype" in cfg:
        cfg.setdefault("torch_dtype", cfg["dtype"])
    return cfg


def legacy_view(model_dir: Path, dst: Path) -> Path:
    """``model_dir`` for transformers 4.x: its files linked, config.json from :func:`legacy_config`."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f.resolve())
    (dst / "config.json").write_text(json.dumps(legacy_config(model_dir)))
    return dst


LLAMA_1B = dict(dim=2048, ffn=8192, layers=16, heads=32, kv_heads=8, vocab=128256, tied=True, dtype="float32",
                extra={"rope_theta": 500000.0, "max_position_embeddings": 131072,
                       "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
LLAMA_7B = dict(dim=4096, ffn=11008, layers=32, heads=32, kv_heads=32, vocab=32000, tied=False, dtype="float16",
                extra={"rope_theta": 10000.0, "max_position_embeddings": 4096})


def write_llama1b(dst: Path) -> None:
    """Llama 3.2 1B shapes (GQA 32/8, tied embeddings, Llama 3 rope scaling) in fp32: 4.9 GB."""
    write_llama(dst, **LLAMA_1B)


def write_llama7b(dst: Path) -> None:
    """Llama 2 7B shapes in fp16: 13.5 GB."""
    write_llama(dst, **LLAMA_7B)


def write_llama(dst: Path, *, dim, ffn, layers, heads, kv_heads, vocab, tied, dtype, extra) -> None:
    """A Llama of these shapes in three safetensors shards, filled with repeated seeded random values (std
    0.02; fast to write, nothing downloaded)."""
    import numpy as np

    dst.mkdir(parents=True, exist_ok=True)
    hd = dim // heads
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": ffn,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
           "head_dim": hd, "vocab_size": vocab, "rms_norm_eps": 1e-5, "tie_word_embeddings": tied,
           "hidden_act": "silu", "torch_dtype": dtype, "bos_token_id": 1, "eos_token_id": 2, **extra}
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, dim)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * hd, dim), p + "self_attn.k_proj.weight": (kv_heads * hd, dim),
                       p + "self_attn.v_proj.weight": (kv_heads * hd, dim), p + "self_attn.o_proj.weight": (dim, heads * hd),
                       p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                       p + "mlp.down_proj.weight": (dim, ffn), p + "input_layernorm.weight": (dim,),
                       p + "post_attention_layernorm.weight": (dim,)})
    np_dtype, st_dtype = (np.float16, "F16") if dtype == "float16" else (np.float32, "F32")
    item = np.dtype(np_dtype).itemsize
    block = (np.random.default_rng(0).standard_normal((32 << 20) // item) * 0.02).astype(np_dtype).tobytes()  # 32 MiB
    names, index = list(shapes), {}
    per = -(-len(names) // 3)
    for s in range(3):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        header, off = {}, 0
        for n in part:
            nbytes = int(np.prod(shapes[n])) * item
            header[n] = {"dtype": st_dtype, "shape": list(shapes[n]), "data_offsets": [off, off + nbytes]}
            off += nbytes
            index[n] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dst / fname, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            left = off
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (dst / "config.json").write_text(json.dumps(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a Hugging Face directory (default: a GPT-2-small shape built here)")
    ap.add_argument("--llama1b", type=Path, help="a directory for (or holding) the 1B-shaped Llama written here")
    ap.add_argument("--tokenizer", type=Path, help="a directory whose tokenizer files the 1B-shaped Llama gets "
                    "(onnxruntime-genai's builder wants one; the tokens are never decoded)")
    ap.add_argument("--genai-site", help="site-packages of an environment with onnxruntime-genai (for its builder)")
    ap.add_argument("--genai-python", help="a Python with onnxruntime-genai (to run the outputs)")
    ap.add_argument("--optimum", default="optimum-cli", help="optimum-cli of an environment with optimum-onnx")
    ap.add_argument("--optimum-python", help="a Python with optimum[onnxruntime] (to load the builder's graph)")
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--rss-cap", type=float, default=4.0, help="GB a tool's processes may hold together (default 4)")
    ap.add_argument("--llama7b", type=Path)
    ap.add_argument("--only-7b", action="store_true", help="with --llama7b: skip the small model's comparison")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--tools", default="builder,torch,genai,optimum",
                    help="which tools to run, comma-separated (default: every one)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.only_7b:
        compare_small(args, work)
    if args.llama7b:
        compare_7b(args.llama7b, work)


def compare_small(args, work: Path) -> None:
    src = args.llama1b or args.model or work / "gpt2-small"
    if args.llama1b and not (src / "config.json").exists():
        write_llama1b(src)
    if args.llama1b and args.tokenizer:
        for f in args.tokenizer.glob("tokenizer*"):
            if not (src / f.name).exists():
                shutil.copy(f, src / f.name)
    elif args.model is None and not args.llama1b and not (src / "config.json").exists():
        build_gpt2(src)
    ckpt = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    print(f"source: {src} ({ckpt / 1e6:.0f} MB), {os.cpu_count()} CPUs shared with other work (figures noisy), "
          f"fp32, opset 17, RSS cap {args.rss_cap:g} GB per tool")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    tools = set(args.tools.split(","))
    for label in ("builder", "torch"):
        if label not in tools:
            continue
        out = work / label / "model.onnx"
        shutil.rmtree(out.parent, ignore_errors=True)
        if label == "torch" and ckpt > args.rss_cap * 1e9:
            rows.append({"label": label, "ok": False, "why": f"not started: the {ckpt / 1e9:.1f} GB checkpoint alone "
                         f"is past the {args.rss_cap:g} GB cap, and tracing holds the model"})
            continue
        rows.append(measure(label, [sys.executable, "-m", "modelport", "convert", str(src), str(out), "--opset", "17",
                                    "--exporter", label, "--no-manifest"], out, env, args.rss_cap))
    if args.genai_site and "genai" in tools:
        gdir = work / "genai"
        shutil.rmtree(gdir, ignore_errors=True)
        code = (f"import sys,runpy;sys.path.append({args.genai_site!r});sys.argv=['builder']+sys.argv[1:];"
                "runpy.run_module('onnxruntime_genai.models.builder',run_name='__main__')")
        rows.append(measure("genai", [sys.executable, "-c", code, "-i", str(src), "-o", str(gdir), "-p", "fp32",
                                      "-e", "cpu", "-c", str(work / "genai-cache")], gdir / "model.onnx",
                            cap_gb=args.rss_cap))
    if Path(args.optimum).exists() and "optimum" in tools:
        odir = work / "optimum"
        shutil.rmtree(odir, ignore_errors=True)
        view = legacy_view(src, work / "optimum-src")
        rows.append(measure("optimum", [args.optimum, "export", "onnx", "--model", str(view), "--task",
                                        "text-generation-with-past", "--opset", "17", str(odir)], odir / "model.onnx",
                            cap_gb=args.rss_cap))
    print(f"{'':8} {'wall s':>7} {'peak RSS':>10} {'written':>9}  runs in onnxruntime / onnxruntime-genai")
    for r in rows:
        if r["ok"]:
            print(f"{r['label']:8} {r['wall']:7.1f} {r['peak'] / 1e9:7.2f} GB {r['size'] / 1e6:6.0f} MB  "
                  f"{runs_in_ort(r['out'], r['size'])} / {runs_in_genai(r['out'].parent, args.genai_python, r['size'])}")
        else:
            print(f"{r['label']:8} {r['why']}")
    ok = {r["label"]: r for r in rows if r["ok"]}
    for other in ("genai", "torch", "optimum"):
        if "builder" in ok and other in ok:
            b, o = ok["builder"], ok[other]
            print(f"builder / {other}: wall {b['wall'] / o['wall']:.2f}x, peak RSS {b['peak'] / o['peak']:.2f}x"
                  + (" (targets vs genai: wall <= 0.5x, peak RSS <= 0.3x)" if other == "genai" else ""))
    if args.greedy and "builder" in ok:
        graph = ok["builder"]["out"]
        print("greedy:", greedy_check(src, graph))
        if args.optimum_python:
            print("greedy:", optimum_check(src, graph, args.optimum_python))
        if args.genai_python:
            print("greedy:", genai_check(src, graph, args.genai_python))


def compare_7b(big: Path, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not (big / "config.json").exists():
        write_llama7b(big)
    size = sum(p.stat().st_size for p in big.iterdir())
    copy = work / "llama7b-cp"
    shutil.rmtree(copy, ignore_errors=True)
    cp = measure("cp", ["cp", "-r", str(big), str(copy)], copy / "config.json")
    shutil.rmtree(copy, ignore_errors=True)
    out = work / "llama7b-onnx" / "model.onnx"
    shutil.rmtree(out.parent, ignore_errors=True)
    b = measure("builder", [sys.executable, "-m", "modelport", "convert", str(big), str(out), "--dtype", "fp16",
                            "--exporter", "builder", "--no-manifest"], out, env)
    if not (cp["ok"] and b["ok"]):
        print(f"7B-shaped Llama fp16: cp {cp.get('why', 'ok')}; builder {b.get('why', 'ok')}")
        return
    print(f"7B-shaped Llama fp16 ({size / 1e9:.1f} GB): cp -r {cp['wall']:.1f} s; builder {b.get('wall', 0):.1f} s, "
          f"peak RSS {b.get('peak', 0) / 1e9:.2f} GB, wrote {b.get('size', 0) / 1e9:.1f} GB; builder / cp wall "
          f"{b.get('wall', 0) / cp['wall']:.2f}x (targets: <= 2x, peak RSS <= 1 GB)")
    shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
