"""Tolerances calibrated on the reference itself: its own rounding error is the noise floor.

A fixed ``atol`` cannot fit every model: a 30-layer language model's logits carry more float
rounding than a tiny one's, and an honest export strays from the reference by about as much as the
reference strays from exact arithmetic. So the reference (a torch module) is run once more in
float64, the nearest thing to exact, and once at the candidate's precision when that is lower
(float16 / bfloat16 casts). Per output (and per block in the layer search):

- the **floor** is ``max |ref at precision - ref in float64|`` over every input set: how far the
  reference itself is from exact at the precision being checked;
- the candidate is judged by ``max |cand - ref in float64|`` against ``allowed = max(factor * floor,
  4 ulps of the output's largest value)``; the **margin** is ``allowed / error``.

An honest export or cast lands near 1 floor; a fault (a weight scaled by 1.001, a norm replaced by
ones, rows zeroed) lands tens to thousands of floors away. A reference that is not a torch module
(an ONNX graph) cannot be run in float64; the fixed per-dtype tolerances judge it, and the report says.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

from ..models.runnable import CAUSAL_LM, Runnable

DEFAULT_FACTOR = 10.0   # SmolLM2-135M: honest ONNX exports and casts 0.5-1.5 floors, weights scaled by 1.001 50+
_ULPS = 4
_EPS = {"float64": 2.0 ** -52, "float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def float_dtype_of(module) -> str | None:
    """The one floating dtype of a module's parameters (of its buffers when it has none); None when mixed or none.
    Buffers do not count beside parameters: a float16 model keeps its rotary frequencies in float32 by design."""
    params = [t for t in module.parameters() if t.is_floating_point()]
    seen = {str(t.dtype).replace("torch.", "") for t in params or [t for t in module.buffers() if t.is_floating_point()]}
    return next(iter(seen)) if len(seen) == 1 else None


def can_calibrate(r: Runnable) -> bool:
    """A torch module (eager or TorchScript) whose floating tensors share one dtype can be re-run in float64."""
    import torch

    return (r.backend in ("torch", "torchscript") and isinstance(r.module, torch.nn.Module)
            and float_dtype_of(r.module) in _EPS)


@contextmanager
def _cast(r: Runnable, dtype: str):
    """``r`` running at ``dtype`` for the duration. Upward casts are exact both ways, so the module is cast in
    place and back; a downward cast works on a copy (casting back would not restore the weights)."""
    import dataclasses

    import torch

    from .. import dtypes

    own = float_dtype_of(r.module)
    target = dtypes.to_torch(dtype)
    if own == dtype:
        yield r
        return
    if torch.finfo(target).bits > torch.finfo(dtypes.to_torch(own)).bits:
        r.module.to(target)
        try:
            yield r
        finally:
            r.module.to(dtypes.to_torch(own))
        return
    low = copy.deepcopy(r.module).to(target)
    try:
        yield dataclasses.replace(r, module=low)
    finally:
        del low


def _cast_feeds(feeds: dict, dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in feeds.items()}


def run_rows(r: Runnable, feeds: dict) -> dict:
    """Outputs of ``r`` on ``feeds``; a causal LM's left-padded rows are run one at a time on their real
    tokens (positions follow the mask, so the real positions are the same computation), which keeps padding
    out of exact-precision runs (transformers' float64 masks turn a padded row into NaN)."""
    import torch

    mask = feeds.get("attention_mask")
    if r.kind != CAUSAL_LM or mask is None or bool(mask.bool().all()):
        return r.run(feeds)
    outs: dict = {}
    for i in range(mask.shape[0]):
        keep = mask[i].bool()
        row = r.run({k: v[i:i + 1, keep] for k, v in feeds.items()})
        for name, t in row.items():
            if name not in outs:
                outs[name] = torch.full((mask.shape[0], mask.shape[1], *t.shape[2:]), float("nan"), dtype=t.dtype,
                                        device=t.device)
            outs[name][i, keep.to(t.device)] = t[0]
    return outs


def run_at(r: Runnable, feeds_list: list[dict], dtype: str) -> list[dict]:
    """``r``'s outputs on each feeds at ``dtype`` (float64: padded rows run on their own)."""
    from .. import dtypes

    target = dtypes.to_torch(dtype)
    with _cast(r, dtype) as rr:
        run = run_rows if dtype == "float64" else (lambda m, f: m.run(f))
        return [{k: v.detach().cpu() for k, v in run(rr, _cast_feeds(f, target)).items()} for f in feeds_list]


def max_error(a, b, mask=None) -> float | None:
    """``max |a - b|`` over the positions both hold finite values (and ``mask`` keeps); None when none."""
    import torch

    from .metrics import _CHUNK

    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape:
        return None
    keep = None
    if mask is not None and a.dim() >= 2 and tuple(a.shape[:2]) == tuple(mask.shape):
        keep = mask.cpu().bool().reshape(*mask.shape, *([1] * (a.dim() - 2))).expand(a.shape).reshape(-1)
    a, b, worst = a.reshape(-1), b.reshape(-1), None
    for start in range(0, a.numel(), _CHUNK):            # in float64 a piece at a time
        x, y = a[start:start + _CHUNK].double(), b[start:start + _CHUNK].double()
        k = torch.isfinite(x) & torch.isfinite(y)
        if keep is not None:
            k &= keep[start:start + _CHUNK]
        if bool(k.any()):
            worst = max(worst or 0.0, float((x[k] - y[k]).abs().max()))
    return worst


def peak(t) -> float:
    import torch

    from .metrics import _CHUNK

    t, top = t.detach().cpu().reshape(-1), 0.0
    for start in range(0, t.numel(), _CHUNK):
        x = t[start:start + _CHUNK].double()
        x = x[torch.isfinite(x)]
        if x.numel():
            top = max(top, float(x.abs().max()))
    return top


@dataclass(frozen=True)
class Floor:
    """The noise floor of one output (or block): the reference's own distance from float64 at ``dtype``."""

    floor: float
    scale: float          # the output's largest magnitude (float64 run)
    dtype: str
    factor: float

    @property
    def allowed(self) -> float:
        return max(self.factor * self.floor, _ULPS * _EPS.get(self.dtype, _EPS["float32"]) * self.scale)

    def to_json(self) -> dict:
        return {"floor": self.floor, "factor": self.factor, "allowed": self.allowed, "dtype": self.dtype}


def floors(hi: list[dict], lo: list[dict], masks: list, dtype: str, factor: float) -> dict[str, Floor]:
    """One floor per output name over every input set; outputs whose floor cannot be measured are left out."""
    out: dict[str, Floor] = {}
    for h, low, mask in zip(hi, lo, masks):
        for name, t in h.items():
            if name not in low:
                continue
            err = max_error(low[name], t, mask)
            if err is None:
                continue
            prev = out.get(name)
            out[name] = Floor(max(err, prev.floor if prev else 0.0), max(peak(t), prev.scale if prev else 0.0),
                              dtype, factor)
    return {k: v for k, v in out.items() if v.floor == v.floor and v.floor != float("inf")}
