"""Evidence, not a boolean: what two models' outputs say about each other.

Every comparison is a small JSON-serialisable object holding its numbers, the tolerance it was judged
by, the tolerance that would have passed, and ``passed`` (also its truth value), in the manner of
Polygraphy's comparator results. An element passes when ``|cand - ref| <= atol + rtol * |ref|``;
NaN or Inf in the candidate where the reference is finite fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .generate import greedy  # noqa: F401  (greedy generation lives in .generate; kept importable here)

# Default tolerances per compute dtype. fp32 catches a logit moved by 1e-3 wherever |logit| < 90
# (atol + rtol * 90 = 1e-3) while torch and onnxruntime, whose kernels sum in different orders, agree
# (tests/parity, benchmarks/bench_parity.py); fp16 / bf16 allow for their 11 / 8 significant bits.
DEFAULT_TOLERANCES = {
    "float32": (1e-4, 1e-5),
    "float64": (1e-7, 1e-7),
    "float16": (2e-2, 1e-2),
    "bfloat16": (1e-1, 2e-2),
}
_CHUNK = 1 << 19        # elements compared at a time in float64 (4 MiB a copy)
_PRECISION = ["float64", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    dtype: str          # the dtype the defaults were chosen for (calibrated: the precision the floor measures)
    given: bool = False  # --atol / --rtol overrode a default
    floor: float | None = None   # calibrated: the reference's own max error against its float64 run
    factor: float | None = None  # calibrated: atol = max(factor * floor, a few ulps of the output)

    @property
    def calibrated(self) -> bool:
        return self.floor is not None

    def describe(self) -> str:
        if self.calibrated:
            return (f"calibrated: max abs error against the float64 reference up to {self.atol:.3g} = "
                    f"{self.factor:g} x floor {self.floor:.3g} (the {self.dtype} reference's own error)")
        how = "given" if self.given else f"default for {self.dtype}"
        return f"atol {self.atol:g}, rtol {self.rtol:g} ({how})"

    def to_json(self) -> dict:
        out = {"atol": self.atol, "rtol": self.rtol, "dtype": self.dtype, "given": self.given}
        if self.calibrated:
            out.update(calibrated=True, floor=self.floor, factor=self.factor)
        return out


def least_precise(*dtypes: str) -> str:
    """The least precise of the floating dtypes named (what both sides can be held to)."""
    known = [d for d in dtypes if d in _PRECISION]
    return max(known, key=_PRECISION.index) if known else "float32"


def tolerance(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    d_atol, d_rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["float32"])
    return Tolerance(d_atol if atol is None else atol, d_rtol if rtol is None else rtol, dtype,
                     given=atol is not None or rtol is not None)


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


@dataclass
class TensorComparison:
    """One output of one input set: ref against candidate."""

    output: str
    inputs: str                     # the input set's label
    shape: list[int]
    ref_dtype: str
    cand_dtype: str
    positions: int                  # elements compared (padding excluded)
    max_abs: float | None = None
    mean_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    required_atol: float | None = None   # smallest atol that passes at this rtol
    required_rtol: float | None = None   # smallest rtol that passes at this atol
    nonfinite: int = 0              # candidate NaN/Inf where the reference is finite
    worst: list[int] | None = None  # index of the largest error
    floor: float | None = None      # calibrated: the reference's own max error (see calibrate.py)
    allowed: float | None = None    # calibrated: the largest max abs that passes
    passed: bool = False
    problem: str | None = None      # why nothing could be compared (shape mismatch …)

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return asdict(self)


def _finite_or_none(x: float) -> float | None:
    import math

    return x if math.isfinite(x) else None


def compare_tensors(ref, cand, tol: Tolerance, *, output: str, inputs: str, mask=None) -> TensorComparison:
    """Compare ``cand`` with ``ref``; ``mask`` (batch × sequence) excludes padded positions."""
    import torch

    ref_c, cand_c = ref.detach().cpu(), cand.detach().cpu()
    out = TensorComparison(output, inputs, list(ref_c.shape), dtype_name(ref_c), dtype_name(cand_c), 0)
    if tol.calibrated:
        out.floor, out.allowed = tol.floor, tol.atol
    if tuple(ref_c.shape) != tuple(cand_c.shape):
        out.problem = f"shape {list(cand_c.shape)} where the reference has {list(ref_c.shape)}"
        return out
    keep = None
    if mask is not None and ref_c.dim() >= 2 and tuple(ref_c.shape[:2]) == tuple(mask.shape):
        keep = mask.cpu().bool().reshape(*mask.shape, *([1] * (ref_c.dim() - 2))).expand(ref_c.shape).reshape(-1)
    a_all, b_all = ref_c.reshape(-1), cand_c.reshape(-1)
    tiny = torch.finfo(torch.float64).tiny
    total = dot = aa = bb = 0.0
    max_abs = max_rel = need_atol = need_rtol = -1.0
    worst, passed = None, True
    for start in range(0, a_all.numel(), _CHUNK):       # in float64 a piece at a time: logits are large
        a, b = a_all[start:start + _CHUNK].double(), b_all[start:start + _CHUNK].double()
        k = torch.isfinite(a)             # what the reference itself cannot say is not compared
        if keep is not None:
            k &= keep[start:start + _CHUNK]
        where = k.nonzero().squeeze(1)
        a, b = a[where], b[where]
        if not a.numel():
            continue
        out.positions += int(a.numel())
        bad = ~torch.isfinite(b)
        out.nonfinite += int(bad.sum())
        err = (a - b).abs().masked_fill(bad, float("inf"))
        scale = a.abs()
        j = int(torch.argmax(err))
        if float(err[j]) > max_abs:       # the first largest error: its index in the whole tensor
            max_abs, worst = float(err[j]), start + int(where[j])
        total += float(err.sum())
        max_rel = max(max_rel, float((err / scale.clamp(min=tiny)).max()))
        need_atol = max(need_atol, float((err - tol.rtol * scale).clamp(min=0).max()))
        need_rtol = max(need_rtol, float(((err - tol.atol).clamp(min=0) / scale.clamp(min=1e-300)).max()))
        dot, aa, bb = dot + float((a * b).sum()), aa + float((a * a).sum()), bb + float((b * b).sum())
        passed = passed and bool((err <= tol.atol + tol.rtol * scale).all())
    if out.positions == 0:
        out.problem = "no finite reference value to compare"
        return out
    out.max_abs, out.mean_abs = _finite_or_none(max_abs), _finite_or_none(total / out.positions)
    out.max_rel, out.required_atol, out.required_rtol = (_finite_or_none(max_rel), _finite_or_none(need_atol),
                                                         _finite_or_none(need_rtol))
    if not out.nonfinite:
        denom = math.sqrt(aa) * math.sqrt(bb)
        out.cosine = dot / denom if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    out.worst = [int(i) for i in torch.unravel_index(torch.tensor(worst), tuple(ref_c.shape))]
    out.passed = out.nonfinite == 0 and passed
    return out


@dataclass
class TokenAgreement:
    """Next-token agreement of a language model's logits at every real position of one input set."""

    inputs: str
    positions: int
    top1: float                     # fraction of positions whose argmax agrees
    top1_disagreements: int         # positions whose argmax differs ...
    top1_ties: int                  # ... of which the reference's top two are within tolerance of each other
    top5_overlap: float             # mean |top5(ref) ∩ top5(cand)| / 5
    kl_mean: float | None           # KL(ref || cand) of the next-token distributions, nats
    kl_max: float | None
    passed: bool = False

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return asdict(self)


def near_tie(logits_row, tol: Tolerance) -> bool:
    """The top two logits are within tolerance of each other: argmax may flip without a fault."""
    import torch

    top = torch.topk(logits_row.double(), 2).values
    return bool(top[0] - top[1] <= 2 * (tol.atol + tol.rtol * top[0].abs()))


def token_agreement(ref_logits, cand_logits, tol: Tolerance, *, inputs: str, mask=None) -> TokenAgreement:
    import torch

    vocab = ref_logits.shape[-1]
    a_all = ref_logits.detach().cpu().reshape(-1, vocab)
    b_all = cand_logits.detach().cpu().reshape(-1, vocab)
    if mask is not None:
        keep = mask.cpu().bool().reshape(-1)
        a_all, b_all = a_all[keep], b_all[keep]
    n, k = a_all.shape[0], min(5, vocab)
    agree = ties = 0
    differ: list[int] = []
    overlap = kl_sum = 0.0
    kl_max: float | None = 0.0
    rows = max(1, _CHUNK // max(vocab, 1))
    for start in range(0, n, rows):                      # in float64 a few positions at a time
        a, b = a_all[start:start + rows].double(), b_all[start:start + rows].double()
        arg_a, arg_b = a.argmax(-1), b.argmax(-1)
        agree += int((arg_a == arg_b).sum())
        here = (arg_a != arg_b).nonzero().reshape(-1).tolist()
        ties += sum(1 for i in here if near_tie(a[i], tol))
        differ += [start + i for i in here]
        top_a, top_b = a.topk(k, -1).indices, b.topk(k, -1).indices
        overlap += float((top_a.unsqueeze(-1) == top_b.unsqueeze(-2)).any(-1).double().sum())
        if kl_max is not None and bool(torch.isfinite(b).all()):
            log_p, log_q = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0)
            kl_sum, kl_max = kl_sum + float(kl.sum()), max(kl_max, float(kl.max()))
        else:
            kl_max = None
    kl_mean = kl_sum / n if kl_max is not None and n else None
    if not n:
        kl_max = None
    return TokenAgreement(inputs, n, agree / n if n else 1.0, len(differ), ties, overlap / (n * k) if n else 1.0,
                          kl_mean, kl_max, passed=(kl_mean is not None or not n) and len(differ) == ties)


@dataclass
class Generation:
    """Greedy decoding of ``new_tokens`` tokens from the same prompts, compared token by token."""

    inputs: str
    new_tokens: int
    ref_tokens: list[list[int]]
    cand_tokens: list[list[int]]
    first_difference: int | None    # index (0-based, among the new tokens) of the first differing token
    row: int | None                 # the batch row where it differs first
    at_tie: bool = False            # the reference's top two were within tolerance at that step
    passed: bool = False
    steps_run: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("steps_run")
        return out


def compare_generation(ref_out, cand_out, tol: Tolerance, *, inputs: str) -> Generation:
    (ref_tokens, ref_steps), (cand_tokens, cand_steps) = ref_out, cand_out
    n = ref_tokens.shape[1]
    first, row = None, None
    differ = (ref_tokens != cand_tokens)
    if bool(differ.any()):
        cols = differ.any(0).nonzero().reshape(-1)
        first = int(cols[0])
        row = int(differ[:, first].nonzero()[0])
    at_tie = first is not None and near_tie(ref_steps[first][row], tol)
    finite = all(bool(s.isfinite().all()) for s in cand_steps)
    return Generation(inputs, n, ref_tokens.tolist(), cand_tokens.tolist(), first, row, at_tie,
                      passed=finite and (first is None or at_tie))
