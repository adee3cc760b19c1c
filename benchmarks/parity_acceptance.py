"""Calibrated parity on real models: honest conversions pass at every seed, planted faults fail at their layer.

    python benchmarks/parity_acceptance.py SMOLLM2_DIR --work /tmp/acc --seeds 10 \\
        --honest builder14,builder17,builder20,builder23,builder24,torch17,torch23,torchscript,fp16,bf16 \\
        --faults all --fault-formats hf,builder17,torch17,torch23,torchscript
    python benchmarks/parity_acceptance.py MINILM_DIR --work /tmp/acc-minilm --honest torch17,torch23,torchscript,fp16,bf16

The reference is the Hugging Face directory, run by transformers. Each candidate is made once (seed-independent)
under ``--work`` with ``modelport convert`` and reused:

- honest: ``builderN`` (``--exporter builder --opset N``), ``torchN`` (``--exporter torch --opset N``:
  the TorchScript-based exporter up to opset 20, the dynamo one above), ``torchscript``, ``fp16`` / ``bf16``
  (``--dtype`` casts written as safetensors directories);
- faults: a Hugging Face directory with one planted change (the list below), and the same directory
  converted to each of ``--fault-formats``.

Every honest candidate runs at each of ``--seeds`` seeds (all honest candidates of a seed in one ``parity``
call, so the reference is run once per seed); its layer search is also run directly once (seed 0), which
must blame no layer. Every fault runs at ``--fault-seeds`` seeds and must fail (the CLI's exit 1) naming the
expected layer. One line per run, then a summary; exit 1 when any line is wrong. The machine it ran on
is shared, so the seconds are indicative only.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

LLAMA_FAULTS = ("gate_up", "square_t", "q_meta", "kv_swap", "norm_ones", "rope_theta", "scale_1001", "emb_rows")
BERT_FAULTS = ("square_t", "bias_half", "norm_ones", "scale_1001", "emb_rows")


def _llama_faults(cfg: dict) -> dict:
    """name -> (layer expected, module expected (prefix), plant(state, cfg) -> (state, cfg))."""
    import torch

    n = cfg["num_hidden_layers"]
    heads, dim = cfg["num_attention_heads"], cfg["hidden_size"]
    hd = cfg.get("head_dim") or dim // heads
    at = {"gate_up": min(5, n - 1), "square_t": min(10, n - 1), "q_meta": min(15, n - 1), "kv_swap": min(12, n - 1),
          "norm_ones": n - 3, "scale_1001": min(20, n - 1)}
    p = "model.layers.{}."

    def gate_up(s, c):
        k = p.format(at["gate_up"]) + "mlp."
        s[k + "gate_proj.weight"], s[k + "up_proj.weight"] = s[k + "up_proj.weight"], s[k + "gate_proj.weight"]
        return s, c

    def square_t(s, c):
        k = p.format(at["square_t"]) + "self_attn.q_proj.weight"
        s[k] = s[k].t().contiguous()
        return s, c

    def q_meta(s, c):          # head 1's rows in Meta's interleaved rotary order
        k = p.format(at["q_meta"]) + "self_attn.q_proj.weight"
        w = s[k].clone()
        rows = w[hd:2 * hd]
        w[hd:2 * hd] = rows.reshape(2, hd // 2, dim).transpose(0, 1).reshape(hd, dim)
        s[k] = w
        return s, c

    def kv_swap(s, c):
        for proj in ("k_proj", "v_proj"):
            k = p.format(at["kv_swap"]) + f"self_attn.{proj}.weight"
            w = s[k].clone()
            w[:hd], w[hd:2 * hd] = s[k][hd:2 * hd], s[k][:hd]
            s[k] = w
        return s, c

    def norm_ones(s, c):
        k = p.format(at["norm_ones"]) + "post_attention_layernorm.weight"
        s[k] = torch.ones_like(s[k])
        return s, c

    def rope_theta(s, c):
        c = json.loads(json.dumps(c))
        if isinstance(c.get("rope_parameters"), dict):
            c["rope_parameters"]["rope_theta"] = c["rope_parameters"].get("rope_theta", 10000.0) * 2
        c["rope_theta"] = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        return s, c

    def scale_1001(s, c):
        k = p.format(at["scale_1001"]) + "self_attn.o_proj.weight"
        s[k] = s[k] * 1.001
        return s, c

    def emb_rows(s, c):       # rows zeroed in the input embedding, the output head untied (keeps them)
        e = s["model.embed_tokens.weight"]
        s["lm_head.weight"] = e.clone()
        z = e.clone()
        z[[101, e.shape[0] // 2, e.shape[0] - 7]] = 0
        s["model.embed_tokens.weight"] = z
        return s, {**c, "tie_word_embeddings": False}

    lay = lambda f, part: (at[f], p.format(at[f]) + part)        # noqa: E731
    return {"gate_up": (*lay("gate_up", "mlp"), gate_up), "square_t": (*lay("square_t", "self_attn"), square_t),
            "q_meta": (*lay("q_meta", "self_attn"), q_meta), "kv_swap": (*lay("kv_swap", "self_attn"), kv_swap),
            "norm_ones": (*lay("norm_ones", "post_attention_layernorm"), norm_ones),
            "rope_theta": (0, "model.layers.0.self_attn", rope_theta),
            "scale_1001": (*lay("scale_1001", "self_attn"), scale_1001),
            "emb_rows": (None, "model.embed_tokens", emb_rows)}


def _bert_faults(cfg: dict) -> dict:
    import torch

    n = cfg["num_hidden_layers"]
    at = {"square_t": 1, "bias_half": min(3, n - 1), "norm_ones": n - 2, "scale_1001": min(2, n - 1)}
    p = "encoder.layer.{}."

    def square_t(s, c):
        k = p.format(at["square_t"]) + "attention.self.query.weight"
        s[k] = s[k].t().contiguous()
        return s, c

    def bias_half(s, c):
        k = p.format(at["bias_half"]) + "output.dense.bias"
        b = s[k].clone()
        b[: b.numel() // 2] += 0.01 * b.abs().mean()
        s[k] = b
        return s, c

    def norm_ones(s, c):
        k = p.format(at["norm_ones"]) + "output.LayerNorm.weight"
        s[k] = torch.ones_like(s[k])
        return s, c

    def scale_1001(s, c):
        k = p.format(at["scale_1001"]) + "intermediate.dense.weight"
        s[k] = s[k] * 1.001
        return s, c

    def emb_rows(s, c):
        k = "embeddings.word_embeddings.weight"
        z = s[k].clone()
        z[[101, z.shape[0] // 2, z.shape[0] - 7]] = 0
        s[k] = z
        return s, c

    return {"square_t": (at["square_t"], p.format(at["square_t"]) + "attention", square_t),
            "bias_half": (at["bias_half"], p.format(at["bias_half"]) + "output", bias_half),
            "norm_ones": (at["norm_ones"], p.format(at["norm_ones"]) + "output", norm_ones),
            "scale_1001": (at["scale_1001"], p.format(at["scale_1001"]) + "intermediate", scale_1001),
            "emb_rows": (None, "embeddings", emb_rows)}


def _write_dir(src: Path, dst: Path, plant) -> None:
    """``src`` with one fault planted, as a Hugging Face directory (config and tokenizer files copied)."""
    from safetensors.torch import load_file, save_file

    if (dst / "model.safetensors").exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".jinja") and f.name != "model.safetensors.index.json":
            shutil.copy(f, tmp / f.name)
    state = load_file(src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    state, cfg = plant(dict(state), cfg)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(dst)


def _convert(src: Path, fmt: str, work: Path) -> Path:
    """``src`` converted to ``fmt`` under ``work`` (made once; reused when present)."""
    name = src.name if src.is_dir() else src.stem
    if fmt == "hf":
        return src
    if fmt.startswith("builder") or fmt.startswith("torch") and fmt != "torchscript":
        exporter, opset = ("builder", fmt[7:]) if fmt.startswith("builder") else ("torch", fmt[5:])
        dst = work / f"{name}.{fmt}" / "model.onnx"     # a folder each: the builder writes genai_config.json beside
        dst.parent.mkdir(exist_ok=True)
        args = ["--exporter", exporter, "--opset", opset]
    elif fmt == "torchscript":
        dst, args = work / f"{name}.ts", ["--to", "torchscript"]
    elif fmt in ("fp16", "bf16"):
        dst, args = work / f"{name}.{fmt}", ["--to", "hf", "--dtype", fmt]
    else:
        raise SystemExit(f"unknown format {fmt}")
    if not dst.exists():
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "modelport", "convert", str(src), str(dst), *args, "--no-manifest"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"convert {src} -> {dst} failed: {res.stderr.strip()[-400:]}")
        print(f"# made {dst.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return dst


def _where(c) -> str:
    div = c.first_divergence
    if div is None:
        return "-" if c.divergence_note is None else "not located"
    if div.layer is None:
        return div.name or "after last"
    return f"{div.layer}:{div.name}"


def _line(model, cand, fmt, seed, c, expect, seconds) -> bool:
    """Print one run; true when it is as expected."""
    logits = [o for o in c.comparisons if o.output == c.comparisons[0].output]
    worst = max((o.max_abs if o.max_abs is not None else float("inf")) for o in logits)
    fl = c.tolerance.floor
    cov = c.coverage
    if expect is None:               # honest: passes
        ok = c.passed
        want = "pass"
    else:
        layer, name = expect
        if fmt.startswith("builder") and layer is not None:
            name = name.rsplit(".", 1)[0]      # the builder's graph scopes blocks, not their children
        div = c.first_divergence
        named = (div is not None and div.layer == layer and (div.name or "").startswith(name))
        ok = not c.passed and named
        want = f"exit 1 @ {layer if layer is not None else ''}:{name}"
    print(f"{model:<8} {cand:<26} {fmt:<12} {seed:>4} {'PASS' if c.passed else 'FAIL':>5} "
          f"{worst / fl if fl else float('nan'):>9.3g} {'ok' if cov is None or cov.passed else 'bad':>4} "
          f"{_where(c)[:44]:<44} {want[:44]:<44} {'ok' if ok else 'WRONG':>5} {seconds:>5.0f}", flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="where the converted candidates are made and kept")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="honest runs use seeds first-seed .. first-seed+seeds-1")
    ap.add_argument("--new-tokens", type=int, default=16, help="greedy tokens of the honest runs (parity's default)")
    ap.add_argument("--fault-new-tokens", type=int, default=4)
    ap.add_argument("--no-layer-check", action="store_true", help="skip the direct layer search on honest candidates")
    ap.add_argument("--honest", default="", help="comma list: builderN, torchN, torchscript, fp16, bf16")
    ap.add_argument("--faults", default="", help="comma list of fault names, or all")
    ap.add_argument("--fault-formats", default="hf", help="comma list: hf, builderN, torchN, torchscript")
    ap.add_argument("--fault-seeds", type=int, default=1)
    args = ap.parse_args()

    import torch

    from modelport.models.runnable import example_feeds, load_runnable
    from modelport.parity import parity
    from modelport.parity.calibrate import DEFAULT_FACTOR
    from modelport.parity.layers import first_divergence, script_prefix
    from modelport.parity.metrics import tolerance

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((args.model / "config.json").read_text())
    tag = cfg.get("model_type", "model")
    table = _bert_faults(cfg) if tag == "bert" else _llama_faults(cfg)
    print(f"{'model':<8} {'candidate':<26} {'format':<12} {'seed':>4} {'got':>5} {'x floor':>9} {'cov':>4} "
          f"{'layer named':<44} {'expected':<44} {'':>5} {'s':>5}")
    ref = load_runnable(args.model, engine="transformers")
    wrong = 0
    honest = [f for f in args.honest.split(",") if f]
    if honest:
        cands = {f: _convert(args.model, f, args.work) for f in honest}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            start = time.perf_counter()      # candidates given as paths: each is loaded, run and released in turn
            rep = parity(ref, *cands.values(), seed=seed, new_tokens=args.new_tokens)
            each = (time.perf_counter() - start) / len(cands)
            for f, c in zip(cands, rep.candidates):
                wrong += not _line(tag, "honest", f, seed, c, None, each)
        if not args.no_layer_check:
            feeds = example_feeds(ref, batch=1, seq_len=32, seed=0, left_pad=0)
            for f, path in cands.items():    # the layer search itself, run on an honest candidate: no block blamed
                dtype = "float16" if f == "fp16" else "bfloat16" if f == "bf16" else "float32"
                r = load_runnable(path)
                replay_from = None           # as parity does: a script of modelport's model replays its blocks
                if r.backend == "torchscript" and not script_prefix(r):
                    replay_from = load_runnable(args.model, engine="reference")
                div = first_divergence(ref, r, feeds, tolerance(dtype, None, None), factor=DEFAULT_FACTOR,
                                       replay_from=replay_from)
                ok = div is not None and div.layer is None and div.name is None
                wrong += not ok
                print(f"# layer search on honest {f}: {'no layer blamed' if ok else div}"
                      f"{f' ({div.layers} blocks, {div.fed} fed)' if div else ''}", flush=True)
                del r
                gc.collect()
    faults = [f for f in (table if args.faults == "all" else args.faults.split(",")) if f]
    for fault in faults:
        _write_dir(args.model, args.work / f"fault-{fault}", table[fault][2])
    for fmt in [f for f in args.fault_formats.split(",") if f] if faults else []:
        paths = [_convert(args.work / f"fault-{fault}", fmt, args.work) for fault in faults]
        for seed in range(args.fault_seeds):
            start = time.perf_counter()
            rep = parity(ref, *paths, seed=seed, new_tokens=args.fault_new_tokens)
            each = (time.perf_counter() - start) / len(paths)
            for fault, c in zip(faults, rep.candidates):
                layer, name, _ = table[fault]
                wrong += not _line(tag, f"FAULT {fault}", fmt, seed, c, (layer, name), each)
    print(f"# {'all as expected' if not wrong else f'{wrong} runs not as expected'}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
