"""ONNX export of a decoder: modelport's builder against its torch.onnx path and other tools, side by side.

Exports one Hugging Face directory (``--model``, e.g. SmolLM2-135M; by default a GPT-2-small-shaped one
built here from a seeded generator) to ONNX fp32 opset 17, each tool in its own process:

    builder   python -m modelport convert DIR out.onnx --opset 17 --exporter builder --no-manifest
              (the graph built from the family record with a key/value cache, weights streamed)
    torch     python -m modelport convert DIR out.onnx --opset 17 --exporter torch --no-manifest
              (torch.onnx tracing; its own check against eager included; no cache)
    genai     onnxruntime-genai's model builder (-p fp32 -e cpu), when --genai-site names the
              site-packages of an environment that has onnxruntime-genai (it pins its own onnxruntime,
              so it lives in a side environment; it runs with this Python's torch and transformers)
    optimum   optimum-cli export onnx --task text-generation-with-past, when --optimum exists

For each: wall time, peak RSS (ru_maxrss of the child), bytes written, whether the graph loads and runs
one step in onnxruntime, and whether onnxruntime-genai generates from it (graphs with genai_config.json).
``--greedy`` also checks that greedy generation with the builder's cache (32 tokens, three left-padded
seeded prompts) equals transformers' greedy.

``--llama7b DIR`` writes a 7B-shaped Llama (Llama 2 7B shapes, fp16, random bytes: 13.5 GB in
safetensors shards) into DIR unless there, then times ``cp -r`` of it against the builder's fp16 export
(``--dtype fp16 --no-kv-cache`` is not used: the export has the cache) and reports the builder's peak RSS.

Figures on a shared machine are noisy: compare ratios from one run.

Usage: python benchmarks/bench_onnx_export.py [--model DIR] [--genai-site SITE] [--genai-python PY]
       [--optimum optimum-cli] [--greedy] [--llama7b DIR] [--workdir DIR]
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


def measure(label: str, cmd: list[str], out: Path, env=None) -> dict:
    # each command runs in a fresh child of a fresh python, so ru_maxrss is its own
    code = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);w=time.perf_counter()-t;"
            "print(json.dumps([w,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,p.returncode,"
            "p.stderr[-1500:]]))")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    wall, peak, rc, err = json.loads(proc.stdout.strip().splitlines()[-1])
    if rc != 0:
        print(f"{label} FAILED (exit {rc}):\n{err}", file=sys.stderr)
        return {"label": label, "ok": False}
    size = sum(p.stat().st_size for p in out.parent.iterdir() if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data"))
    return {"label": label, "ok": True, "wall": wall, "peak": peak, "size": size, "out": out}


def runs_in_ort(path: Path) -> str:
    import numpy as np
    import onnxruntime as ort

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


def runs_in_genai(directory: Path, python: str | None) -> str:
    if not (directory / "genai_config.json").exists():
        return "n/a (no genai_config.json)"
    if python is None:
        return "not tried (--genai-python)"
    script = ("import sys,numpy as np,onnxruntime_genai as og\nm=og.Model(sys.argv[1]);p=og.GeneratorParams(m)\n"
              "p.set_search_options(max_length=12,do_sample=False);g=og.Generator(m,p)\n"
              "g.append_tokens(np.array([[1,2,3,4]],dtype=np.int32))\nwhile not g.is_done(): g.generate_next_token()\n")
    p = subprocess.run([python, "-c", script, str(directory)], capture_output=True, text=True)
    return "yes" if p.returncode == 0 else f"no: {p.stderr.strip().splitlines()[-1][:60] if p.stderr.strip() else p.returncode}"


def greedy_check(model_dir: Path, graph: Path) -> str:
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    from modelport.convert.onnx_builder.generate import greedy

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :2] = 0, 0
    ids[mask == 0] = 0
    want, cur, m = [], ids, mask
    with torch.no_grad():
        for _ in range(32):
            pos = (m.cumsum(-1) - 1).clamp(min=0)
            nxt = model(input_ids=cur, attention_mask=m, position_ids=pos).logits[:, -1].argmax(-1)
            want.append(nxt)
            cur, m = torch.cat([cur, nxt[:, None]], 1), torch.cat([m, torch.ones_like(m[:, :1])], 1)
    want = torch.stack(want, 1).numpy()
    got = greedy(ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]), ids.numpy(), mask.numpy(), 32)
    same = int((got == want).all(axis=1).sum())
    return f"{same}/3 left-padded rows equal transformers' greedy for 32 tokens"


def write_llama7b(dst: Path) -> None:
    """Llama 2 7B shapes in fp16 safetensors shards, filled with repeated random bytes (fast to write)."""
    import numpy as np

    dst.mkdir(parents=True, exist_ok=True)
    dim, ffn, layers, vocab = 4096, 11008, 32, 32000
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": ffn,
           "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": vocab,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
           "hidden_act": "silu", "torch_dtype": "float16"}
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (dim, dim), p + "self_attn.k_proj.weight": (dim, dim),
                       p + "self_attn.v_proj.weight": (dim, dim), p + "self_attn.o_proj.weight": (dim, dim),
                       p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                       p + "mlp.down_proj.weight": (dim, ffn), p + "input_layernorm.weight": (dim,),
                       p + "post_attention_layernorm.weight": (dim,)})
    block = np.random.default_rng(0).standard_normal(16 << 20).astype(np.float16).tobytes()   # 32 MiB
    names, shards, index = list(shapes), [], {}
    per = -(-len(names) // 3)
    for s in range(3):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        header, off = {}, 0
        for n in part:
            nbytes = int(np.prod(shapes[n])) * 2
            header[n] = {"dtype": "F16", "shape": list(shapes[n]), "data_offsets": [off, off + nbytes]}
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
        shards.append(fname)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (dst / "config.json").write_text(json.dumps(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a Hugging Face directory (default: a GPT-2-small shape built here)")
    ap.add_argument("--genai-site", help="site-packages of an environment with onnxruntime-genai (for its builder)")
    ap.add_argument("--genai-python", help="a Python with onnxruntime-genai (to run the outputs)")
    ap.add_argument("--optimum", default="optimum-cli", help="optimum-cli of an environment with optimum-onnx")
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--llama7b", type=Path)
    ap.add_argument("--only-7b", action="store_true", help="with --llama7b: skip the small model's comparison")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-onnx-"))
    if not args.only_7b:
        compare_small(args, work)
    if args.llama7b:
        compare_7b(args.llama7b, work)


def compare_small(args, work: Path) -> None:
    src = args.model or work / "gpt2-small"
    if args.model is None and not (src / "config.json").exists():
        build_gpt2(src)
    ckpt = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    print(f"source: {src} ({ckpt / 1e6:.0f} MB), {os.cpu_count()} CPUs, fp32, opset 17 (shared machine: noisy)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    for label in ("builder", "torch"):
        out = work / label / "model.onnx"
        shutil.rmtree(out.parent, ignore_errors=True)
        rows.append(measure(label, [sys.executable, "-m", "modelport", "convert", str(src), str(out), "--opset", "17",
                                    "--exporter", label, "--no-manifest"], out, env))
    if args.genai_site:
        gdir = work / "genai"
        shutil.rmtree(gdir, ignore_errors=True)
        code = (f"import sys,runpy;sys.path.append({args.genai_site!r});sys.argv=['builder']+sys.argv[1:];"
                "runpy.run_module('onnxruntime_genai.models.builder',run_name='__main__')")
        rows.append(measure("genai", [sys.executable, "-c", code, "-i", str(src), "-o", str(gdir), "-p", "fp32",
                                      "-e", "cpu", "-c", str(work / "genai-cache")], gdir / "model.onnx"))
    if Path(args.optimum).exists():
        odir = work / "optimum"
        shutil.rmtree(odir, ignore_errors=True)
        rows.append(measure("optimum", [args.optimum, "export", "onnx", "--model", str(src), "--task",
                                        "text-generation-with-past", "--opset", "17", str(odir)], odir / "model.onnx"))
    print(f"{'':8} {'wall s':>7} {'peak RSS':>10} {'written':>9}  runs in onnxruntime / onnxruntime-genai")
    for r in rows:
        if r["ok"]:
            print(f"{r['label']:8} {r['wall']:7.1f} {r['peak'] / 1e9:7.2f} GB {r['size'] / 1e6:6.0f} MB  "
                  f"{runs_in_ort(r['out'])} / {runs_in_genai(r['out'].parent, args.genai_python)}")
    ok = {r["label"]: r for r in rows if r["ok"]}
    for other in ("genai", "torch", "optimum"):
        if "builder" in ok and other in ok:
            b, o = ok["builder"], ok[other]
            print(f"builder / {other}: wall {b['wall'] / o['wall']:.2f}x, peak RSS {b['peak'] / o['peak']:.2f}x"
                  + (" (targets vs genai: wall <= 0.5x, peak RSS <= 0.3x)" if other == "genai" else ""))
    if args.greedy and "builder" in ok:
        print("greedy:", greedy_check(src, ok["builder"]["out"]))


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
    print(f"7B-shaped Llama fp16 ({size / 1e9:.1f} GB): cp -r {cp['wall']:.1f} s; builder {b.get('wall', 0):.1f} s, "
          f"peak RSS {b.get('peak', 0) / 1e9:.2f} GB, wrote {b.get('size', 0) / 1e9:.1f} GB; builder / cp wall "
          f"{b.get('wall', 0) / cp['wall']:.2f}x (targets: <= 2x, peak RSS <= 1 GB)")
    shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
