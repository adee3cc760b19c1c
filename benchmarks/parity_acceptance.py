"""Calibrated parity on a real model: honest conversions pass at every seed, planted faults fail at their layer.

    python benchmarks/parity_acceptance.py SMOLLM2_DIR --onnx x17.onnx --onnx x20.onnx --seeds 10

The reference is the HF directory run by transformers. Honest candidates: each ``--onnx`` / ``--torchscript``
file given, and modelport's own Llama of the same directory in float32, float16 and bfloat16. Faults: the
float32 candidate with one change (a projection scaled by 1.001 at layer 20, a late norm replaced by ones,
gate and up swapped at layer 5). Prints one line per candidate and seed: verdict, max abs / allowed, the
floor and the layer named.
"""

from __future__ import annotations

import argparse
import gc
import time


def _faults(n_layers: int):
    import torch

    def scale(m):
        m.model.layers[min(20, n_layers - 1)].self_attn.o_proj.weight.data *= 1.001

    def norm(m):
        w = m.model.layers[n_layers - 3].post_attention_layernorm.weight
        w.data = torch.ones_like(w)

    def swap(m):
        mlp = m.model.layers[min(5, n_layers - 1)].mlp
        mlp.gate_proj.weight.data, mlp.up_proj.weight.data = mlp.up_proj.weight.data, mlp.gate_proj.weight.data

    return {f"o_proj x1.001 @ {min(20, n_layers - 1)}": scale, f"norm ones @ {n_layers - 3}": norm,
            f"gate/up swapped @ {min(5, n_layers - 1)}": swap}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--onnx", action="append", default=[])
    ap.add_argument("--torchscript", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--casts", default="float32,float16,bfloat16")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--fault-seeds", type=int, default=2)
    args = ap.parse_args()

    from modelport.models.runnable import load_runnable
    from modelport.parity import parity

    ref = load_runnable(args.model, engine="transformers")
    cands = [(p, lambda p=p: load_runnable(p)) for p in args.onnx + args.torchscript]
    cands += [(f"modelport llama {d}", lambda d=d: load_runnable(args.model, engine="reference", dtype=d))
              for d in args.casts.split(",") if d]
    if not args.no_faults:
        for name, plant in _faults(ref.module.root.config.num_hidden_layers).items():
            def build(plant=plant):
                r = load_runnable(args.model, engine="reference")
                plant(r.module)
                return r
            cands.append((f"FAULT {name}", build))
    print(f"{'candidate':<34} {'seed':>4} {'verdict':>7} {'max abs':>9} {'allowed':>9} {'floor':>9} {'x floor':>8} "
          f"{'layer':>22} {'s':>6}")
    for name, make in cands:
        cand = make()
        for seed in range(args.seeds):
            start = time.perf_counter()
            rep = parity(ref, cand, seed=seed)
            c = rep.candidates[0]
            logits = [o for o in c.comparisons if o.output == c.comparisons[0].output]
            worst = max(o.max_abs if o.max_abs is not None else float("inf") for o in logits)
            div = c.first_divergence
            where = "-" if div is None else f"{div.layer}:{(div.name or '').split('.')[-1]}"
            fl = c.tolerance.floor
            print(f"{name[-34:]:<34} {seed:>4} {'PASS' if c.passed else 'FAIL':>7} {worst:>9.3g} {c.tolerance.atol:>9.3g} "
                  f"{fl if fl is not None else float('nan'):>9.3g} {worst / fl if fl else float('nan'):>8.3g} "
                  f"{where:>22} {time.perf_counter() - start:>6.1f}", flush=True)
            if name.startswith("FAULT") and seed + 1 >= args.fault_seeds:
                break          # a fault's layer is the same at every seed
        del cand
        gc.collect()


if __name__ == "__main__":
    main()
