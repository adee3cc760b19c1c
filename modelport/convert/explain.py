"""Naming the known transform that turns one tensor into another (for ``diff``).

When two tensors of the same name differ, the classic conversion bugs leave a
signature: q/k rows in the other rotary layout, a Conv1D weight not transposed, a
fused QKV in another order than its family record names, model-parallel shards joined on the wrong axis
or in the wrong order, a tied embedding copied into the output slot, a round trip
through a narrower dtype. Each check below tries one of these, with head counts
from either source's config or, failing that, inferred from the shape.
"""

from __future__ import annotations

import re

from ..formats.base import TensorSource
from ..models import families, transforms
from ..models.family import SMALL_HEAD_DIMS
from ..models.layouts import LayoutSource

_MAX_SHARDS = 8


def _same(x, y) -> bool:
    """Same dtype, shape and bytes (NaN payloads and -0.0 count)."""
    import torch

    if x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape):
        return False
    if x.numel() == 0:
        return True
    if x.dtype == torch.bool:
        return torch.equal(x, y)
    return torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8))


def _configs(*sources: TensorSource) -> list[dict]:
    return [s.config for s in sources if s is not None and isinstance(getattr(s, "config", None), dict)]


def _head_candidates(rows: int, fused: int, family, key: str, sources) -> list[tuple[int, str]]:
    """(n_heads, where it came from) to try: config values first, then counts inferred from the
    shape for the family's head sizes. ``fused`` is 3 for a fused q/k/v weight (rows = 3 * heads * head_dim)."""
    out: list[tuple[int, str]] = []
    for cfg in _configs(*sources):
        h = family.dims(cfg).get(key)
        if h and all(h != c for c, _ in out):
            out.append((int(h), "config"))
    for hd in family.head_dims + SMALL_HEAD_DIMS:
        if rows % (fused * hd) == 0:
            h = rows // (fused * hd)
            if all(h != c for c, _ in out):
                out.append((h, "inferred from the shape"))
    return out


def _rope_check(name, a, b, sources) -> str | None:
    if a.dim() not in (1, 2) or a.shape != b.shape:
        return None
    rows = a.shape[0]
    found = next(((fam, r) for fam in families.all_families() for r in fam.rotary_rows if re.search(r.pattern, name)), None)
    if found is None:
        return None
    family, hint = found
    hf_named = hint.side == "hf"
    for h, origin in _head_candidates(rows, 1, family, hint.heads, sources):
        if rows % (2 * h):
            continue
        args = {"n_heads": h}
        call = transforms.call("permute_rope_meta_to_hf" if hf_named else "permute_rope_hf_to_meta", args)
        fn = transforms.get("permute_rope_meta_to_hf" if hf_named else "permute_rope_hf_to_meta").apply
        what = "Meta-layout rows in an HF-named slot" if hf_named else "HF-layout rows in a Meta-named slot"
        note = "" if origin == "config" else f", n_heads {origin}"
        for side, x, y in (("B", b, a), ("A", a, b)):
            if _same(fn(x, **args), y):
                return f"equal after {call} on {side} — {side} holds {what}{note}"
    return None


def _qkv_check(name, a, b, sources) -> str | None:
    found = next(((f, row) for f in families.all_families() for row in f.fused_qkv if re.search(row.pattern, name)), None)
    if found is None or a.shape != b.shape or a.dim() not in (1, 2):
        return None
    family, row = found
    reorder = transforms.get(row.transform).apply
    rows = a.shape[0]
    for h, origin in _head_candidates(rows, 3, family, "n_heads", sources):
        if rows % (3 * h):
            continue
        args = {"n_heads": h}
        note = "" if origin == "config" else f", n_heads {origin}"
        for side, x, y in (("B", b, a), ("A", a, b)):
            if _same(reorder(x, **args), y):
                return (f"equal after {transforms.call(row.transform, args)} on {side} — "
                        f"{side} holds q|k|v blocks where {row.order}{note}")
    return None


def _transpose_check(name, a, b) -> str | None:
    if a.dim() == 2 and b.dim() == 2 and tuple(a.shape) == tuple(b.shape[::-1]) and a.shape[0] != a.shape[1]:
        if _same(a.T, b):
            conv = "Conv1D [in, out]"
            return f"equal after transpose — one side is an nn.Linear [out, in] weight, the other a {conv} one"
    elif a.dim() == 2 and a.shape == b.shape and a.shape[0] == a.shape[1] and _same(a.T, b):
        return "equal after transpose — nn.Linear [out, in] and Conv1D [in, out] orientations of a square weight"
    return None


def _shard_check(name, a, b) -> str | None:
    import torch

    if a.dim() < 2 or a.numel() != b.numel():
        return None
    for k in range(2, _MAX_SHARDS + 1):
        for d0 in range(a.dim()):
            if a.shape[d0] % k:
                continue
            parts = torch.chunk(a, k, dim=d0)
            if a.shape == b.shape:   # the same shards, concatenated in another order
                got = torch.chunk(b, k, dim=d0)
                order = []
                for g in got:
                    match = next((i for i, p in enumerate(parts) if i not in order and _same(p, g)), None)
                    if match is None:
                        break
                    order.append(match)
                if len(order) == k and order != list(range(k)):
                    return (f"equal after reordering {k} shards along dim {d0} — B joins A's shards in the order "
                            f"{', '.join(map(str, order))}")
            for d1 in range(a.dim()):
                if d1 != d0 and _same(torch.cat(parts, dim=d1), b):
                    return (f"equal after merging {k} shards on dim {d1} instead of dim {d0} — "
                            "model-parallel shards joined on the wrong axis")
                if d1 != d0 and a.shape != b.shape and b.shape[d1] % k == 0 and _same(torch.cat(torch.chunk(b, k, dim=d1), dim=d0), a):
                    return (f"equal after merging {k} shards on dim {d0} instead of dim {d1} — "
                            "model-parallel shards joined on the wrong axis (in A)")
    return None


def _tied_check(name, a, b, a_source, b_source) -> str | None:
    groups = {pair for fam in families.all_families() for pair in fam.tied_pairs()}
    for group in sorted(groups):
        if name not in group:
            continue
        for partner in group:
            if partner == name:
                continue
            for side, src, other, mine in (("B", a_source, "A", b), ("A", b_source, "B", a)):
                if src is None:
                    continue
                names = set(src.names()) | set(src.aliases())
                if partner in names:
                    t = src.read(partner)
                    if _same(t, mine):
                        return (f"{side}'s {name} equals {other}'s {partner} — a tied copy of the embedding "
                                f"where {other} has weights of its own")
    return None


def _rounding_check(name, a, b) -> str | None:
    import torch

    if not (a.is_floating_point() and b.is_floating_point()) or a.shape != b.shape:
        return None
    if a.dtype != b.dtype:
        wide, narrow, wn, nn = (a, b, "A", "B") if a.element_size() > b.element_size() else (b, a, "B", "A")
        if _same(wide.to(narrow.dtype), narrow):
            return f"equal after rounding {wn} to {str(narrow.dtype).removeprefix('torch.')} — a dtype cast"
        return None
    dt = str(a.dtype).removeprefix("torch.")
    step = max(1, a.numel() // 4096)      # a sample first: tensors with other values fail it at once
    x, y = a.reshape(-1)[::step].float(), b.reshape(-1)[::step].float()
    close = (x - y).abs() <= torch.maximum(x.abs(), y.abs()) * 2.0 ** -7 + 2.0 ** -24   # within a bfloat16 ulp
    if not bool((close | (x != x) | (y != y)).all()):
        return None
    for low in (torch.bfloat16, torch.float16):
        if torch.empty(0, dtype=low).element_size() >= a.element_size():
            continue
        lname = str(low).removeprefix("torch.")
        if _same(a.to(low).to(a.dtype), b):
            return f"equal after rounding A to {lname} — B went through {lname} and back to {dt}"
        if _same(b.to(low).to(b.dtype), a):
            return f"equal after rounding B to {lname} — A went through {lname} and back to {dt}"
    return None


def _aligned_check(name, a, b_source) -> str | None:
    """B was mapped into A's layout for the comparison, and B's own tensor is A's as it is: the
    transform its layout needs was never applied when B was written."""
    if not isinstance(b_source, LayoutSource) or name not in b_source.names() or not b_source.transforms_of(name):
        return None
    raw_name = b_source.source_name(name)
    if not _same(b_source.inner.read(raw_name), a):
        return None
    missing = ", ".join(b_source.inverse_transforms_of(name))
    return (f"B's {raw_name} ({b_source.src_layout.id}) holds A's tensor unchanged — {missing} was not applied "
            f"when B was written in layout {b_source.src_layout.id}")


def _maybe_rearranged(a, b) -> bool:
    """A cheap necessary condition for ``b`` being a rearrangement of ``a``'s elements: same count
    and, up to summation order, the same sum and sum of squares. Spares the costly checks on
    tensors that simply hold other values; when in doubt (inf, NaN, other dtypes) it says yes."""
    import math

    import torch

    if a.numel() != b.numel() or a.dtype != b.dtype:
        return False
    if not a.is_floating_point() or a.numel() == 0:
        return True
    x, y = a.reshape(-1).float(), b.reshape(-1).float()
    sx, sy, qx, qy = (float(v) for v in (x.sum(), y.sum(), torch.dot(x, x), torch.dot(y, y)))
    if not all(math.isfinite(v) for v in (sx, sy, qx, qy)):
        return True
    tol = 1e-4 * math.sqrt(x.numel() * qx) + 1e-30     # sum |x| <= sqrt(n * sum x^2)
    return abs(sx - sy) <= tol and abs(qx - qy) <= 1e-4 * qx + 1e-30


def explain_difference(name: str, a, b, a_source: TensorSource, b_source: TensorSource) -> str | None:
    """When torch tensors ``a`` and ``b`` differ but one is a known transform of the other,
    a sentence naming the transform; otherwise None."""
    if _same(a, b):
        return None
    rearranged = _maybe_rearranged(a, b)
    checks = (
        lambda: _aligned_check(name, a, b_source),
        lambda: _rounding_check(name, a, b),
        lambda: _rope_check(name, a, b, (a_source, b_source)) if rearranged else None,
        lambda: _qkv_check(name, a, b, (a_source, b_source)) if rearranged else None,
        lambda: _transpose_check(name, a, b) if rearranged else None,
        lambda: _tied_check(name, a, b, a_source, b_source),
        lambda: _shard_check(name, a, b) if rearranged else None,
    )
    for check in checks:
        found = check()
        if found:
            return found
    return None
