"""Tensor-by-tensor comparison of two checkpoints in any readable formats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import dtypes
from .runtime import need_torch
from .formats.base import Options, Span, TensorSource
from .models.sources import open_source


@dataclass
class TensorDiff:
    name: str
    kind: str                       # shape | dtype | values
    a: str
    b: str
    max_abs_diff: float | None = None
    explanation: str | None = None  # a known transform that makes them equal


@dataclass
class DiffReport:
    a: str
    b: str
    atol: float
    compared: int = 0              # names compared, tied aliases included
    equal: int = 0
    aliases: int = 0               # of ``compared``: tied aliases in A (counted apart, as convert and inspect do)
    aliases_equal: int = 0
    cast: bool = False             # values compared across dtypes (a dtype difference alone is not a difference)
    missing: list[str] = field(default_factory=list)      # in A, not in B
    unexpected: list[str] = field(default_factory=list)   # in B, not in A
    differences: list[TensorDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)         # how the two were lined up
    matched: list[str] = field(default_factory=list)       # on one side only, yet no difference (tied alias, derived buffer)

    def __bool__(self) -> bool:
        """True when the two checkpoints hold the same tensors within ``atol``."""
        return not (self.missing or self.unexpected or self.differences)

    def to_json(self) -> dict:
        return {**asdict(self), "same": bool(self)}


def _all_names(source: TensorSource) -> list[str]:
    return source.names() + [a for a in source.aliases() if a not in set(source.names())]


def _derived(source: TensorSource) -> list:
    """Patterns of the buffers ``source``'s family recomputes (rotary ``inv_freq``, causal masks)."""
    import re

    from .models import families
    from .models.detect import detect_family

    try:
        fam = detect_family(source)
    except Exception:   # noqa: BLE001 - a config that names no family only means no patterns
        return []
    return [re.compile(p) for p in families.get(fam).derived_buffers] if fam else []


def _matched(name: str, source: TensorSource, other: set[str], side: str, report: DiffReport, derived: list) -> bool:
    """True (with a line in ``report.matched``) when ``name``, held by one side only, is no difference: a tied
    alias whose kept tensor the other side holds (compared under that name), or a buffer the model recomputes."""
    kept = source.aliases().get(name)
    if kept is not None and kept in other:
        report.matched.append(f"{name}: tied to {kept} in {side} only (the other side does not list the alias)")
        return True
    if any(p.search(name) for p in derived):
        report.matched.append(f"{name}: a buffer the model recomputes, stored in {side} only; not compared")
        return True
    return False


def _rounded_equal(a, b):
    """Where the more precise of two floating tensors, rounded to the other's dtype, is exactly the other:
    what a correct cast (``--dtype fp16``) writes; None when the dtypes are the same or not both real floats."""
    import torch

    if a.dtype == b.dtype or not (a.dtype.is_floating_point and b.dtype.is_floating_point):
        return None
    wide, narrow = (a, b) if torch.finfo(a.dtype).eps < torch.finfo(b.dtype).eps else (b, a)
    rounded = wide.to(narrow.dtype)
    return (rounded == narrow) | (torch.isnan(rounded) & torch.isnan(narrow))


def compare_tensors(a, b, atol: float, rounding: bool = False) -> tuple[bool, float]:
    """(equal within atol, max abs difference), NaNs equal where both are NaN. ``rounding``: across dtypes, a
    value that is exactly the other rounded to the less precise dtype is equal (difference 0)."""
    import torch

    if a.numel() == 0:
        return True, 0.0
    exact = _rounded_equal(a, b) if rounding else None
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    if a.dtype.is_floating_point or a.dtype.is_complex:
        wide = torch.complex128 if a.dtype.is_complex else torch.float64
        x, y = a.to(wide), b.to(wide)
        both_nan = torch.isnan(x) & torch.isnan(y)
        same_inf = torch.isinf(x) & (x == y)
        if exact is not None:
            same_inf = same_inf | exact
        d = (x - y).abs()
        d = torch.where(both_nan | same_inf, torch.zeros_like(d, dtype=d.dtype), d)
        d = torch.nan_to_num(d.real if d.is_complex() else d, nan=float("inf"))
        worst = float(d.max())
        return worst <= atol, worst
    x, y = a.to(torch.int64), b.to(torch.int64)
    worst = float((x - y).abs().max())
    return worst <= atol, worst


def diff(a: str | Path, b: str | Path, atol: float = 0.0, from_a: str | None = None, from_b: str | None = None,
         options: Options | None = None, cast: bool = False) -> DiffReport:
    """Compare A and B tensor by tensor. ``cast``: compare values across dtypes (both widened), so a
    ``--dtype fp16`` conversion can be checked against its source with ``atol``."""
    from .convert.explain import explain_difference
    from .models.layouts import align

    report = DiffReport(str(a), str(b), atol, cast=cast)
    with open_source(a, from_a, options) as sa, open_source(b, from_b, options) as sb:
        need_torch("diff (it compares tensor values with torch)")   # after the files are known to be readable
        raw_b = sb
        sb = align(sb, sa)    # B under A's names when both are layouts of one family (meta vs hf …)
        if sb is not raw_b:
            report.notes.append(f"B is in layout {sb.src_layout.id}; compared after mapping it to A's layout "
                                f"{sb.layout.id}")
        report.notes.extend(raw_b.notes if sb is raw_b else [])
        names_a, names_b = _all_names(sa), _all_names(sb)
        in_b = set(names_b)
        in_a = set(names_a)
        derived = _derived(sa) or _derived(sb) if (in_a ^ in_b) else []     # one family: A's, else B's
        report.missing = [n for n in names_a if n not in in_b and not _matched(n, sa, in_b, "A", report, derived)]
        report.unexpected = [n for n in names_b if n not in in_a and not _matched(n, sb, in_a, "B", report, derived)]
        for name in names_a:
            if name not in in_b:
                continue
            report.compared += 1
            is_alias = name in sa.aliases()
            report.aliases += is_alias
            ia, ib = sa.info(sa.aliases().get(name, name)), sb.info(sb.aliases().get(name, name))
            if ia.shape != ib.shape:
                d = TensorDiff(name, "shape", f"{list(ia.shape)} {ia.dtype}", f"{list(ib.shape)} {ib.dtype}")
                if ia.numel == ib.numel:
                    d.explanation = explain_difference(name, sa.read(name), sb.read(name), sa, sb)
                report.differences.append(d)
                continue
            if ia.dtype != ib.dtype and not cast:
                ta, tb = sa.read(name), sb.read(name)
                _, worst = compare_tensors(ta, tb.to(ta.dtype) if ta.is_floating_point() else tb, float("inf"))
                report.differences.append(TensorDiff(name, "dtype", ia.dtype, ib.dtype, worst,
                                                     explain_difference(name, ta, tb, sa, sb)))
                continue
            same, worst = compare_streamed(sa, sb, name, atol, rounding=cast)
            if same:
                report.equal += 1
                report.aliases_equal += is_alias
            else:               # the whole tensors only for a difference, to explain it
                ta, tb = sa.read(name), sb.read(name)
                report.differences.append(TensorDiff(name, "values", "", "", worst, explain_difference(name, ta, tb, sa, sb)))
    return report


PIECE = 1 << 22          # elements compared at a time: memory stays a few pieces whatever the tensor's size


def pieces(source: TensorSource, name: str, elements: int | None = None):
    """A tensor's elements, in order, as byte pieces of ``elements`` elements (the last may be shorter).
    Where the bytes lie contiguous in a file they are read piece by piece (not mapped, so no page of
    the file stays resident); otherwise the source's bytes are cut up."""
    from .formats._stream import read_span

    info = source.info(source._canonical(name))
    step = (elements or PIECE) * dtypes.get(info.dtype).itemsize
    span = source.span(info.name)
    if span is None:
        data = memoryview(source.read_bytes(info.name)).cast("B")
        for at in range(0, len(data), step):
            yield data[at:at + step]
        return
    for at in range(0, span.nbytes, step):
        yield read_span(Span(span.path, span.offset + at, min(step, span.nbytes - at)))


def compare_streamed(a: TensorSource, b: TensorSource, name: str, atol: float,
                     rounding: bool = False) -> tuple[bool, float]:
    """:func:`compare_tensors` of tensor ``name`` of ``a`` and ``b`` (same shape), a piece at a time;
    pieces whose bytes are equal (same dtype) are equal without converting them."""
    import torch

    da, db = (dtypes.to_torch(s.info(s._canonical(name)).dtype) for s in (a, b))
    worst = 0.0
    for pa, pb in zip(pieces(a, name), pieces(b, name)):
        if da == db and pa == pb:
            continue
        ta = torch.frombuffer(bytearray(pa), dtype=da) if len(pa) else torch.empty(0, dtype=da)
        tb = torch.frombuffer(bytearray(pb), dtype=db) if len(pb) else torch.empty(0, dtype=db)
        worst = max(worst, compare_tensors(ta, tb, float("inf"), rounding=rounding)[1])
    return worst <= atol, worst
