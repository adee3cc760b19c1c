"""Plain-text rendering of inspect summaries and diff reports for the terminal."""

from __future__ import annotations

import click

from .diff import DiffReport
from .inspect import Summary


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def print_summary(s: Summary, show_all: bool = False, limit: int = 50) -> None:
    echo = click.echo
    echo(f"{s.path}: {s.format}")
    if s.architecture:
        echo(f"architecture: {s.architecture}")
    dtypes = ", ".join(f"{d} {_count(n)}" for d, n in s.dtypes.items())
    echo(f"tensors: {sum(1 for t in s.tensors if not t.alias_of)}   parameters: {_count(s.total_params)} "
         f"({s.total_params:,})   size: {human(s.total_bytes)}   dtypes: {dtypes or '-'}")
    for note in s.notes:
        echo(f"note: {note}")
    if s.tensors:
        echo("")
        rows = s.tensors if show_all else s.tensors[:limit]
        width = min(max(len(t.name) for t in rows), 70)
        echo(f"{'name':<{width}}  {'shape':<20} {'dtype':<9} {'bytes':>10}")
        for t in rows:
            shape = "[" + ", ".join(map(str, t.shape)) + "]"
            extra = f"  = {t.alias_of} (tied)" if t.alias_of else ""
            echo(f"{t.name:<{width}}  {shape:<20} {t.dtype:<9} {human(t.bytes):>10}{extra}")
        if len(rows) < len(s.tensors):
            echo(f"… {len(s.tensors) - len(rows)} more (--all lists every tensor)")
    if len(s.modules) > 1:
        echo("\nmodules (parameters):")
        for m in s.modules:
            if m.name:
                echo(f"  {'  ' * (m.depth - 1)}{m.name.rsplit('.', 1)[-1]:<24} {_count(m.params):>9}  ({m.tensors} tensors)")
    if s.metadata:
        echo("\nmetadata:")
        for k, v in s.metadata.items():
            echo(f"  {k}: {v if len(v) < 100 else v[:97] + '…'}")
    if s.side_files:
        echo(f"\nother files: {', '.join(s.side_files)}")
    if s.model:
        echo("\nrebuilt as a PyTorch module:")
        echo(s.model)
    if s.tree:
        echo("\nobject tree:")
        echo(s.tree)


def print_diff(r: DiffReport) -> None:
    echo = click.echo
    for note in r.notes:
        echo(f"note: {note}")
    for name in r.missing:
        echo(f"only in A: {name}")
    for name in r.unexpected:
        echo(f"only in B: {name}")
    for d in r.differences:
        if d.kind == "values":
            line = f"{d.name}: values differ, max abs diff {d.max_abs_diff:.6g}"
        else:
            line = f"{d.name}: {d.kind} differs: A {d.a}, B {d.b}"
            if d.max_abs_diff is not None:
                line += f", max abs diff {d.max_abs_diff:.6g}"
        if d.explanation:
            line += f" — {d.explanation}"
        echo(line)
    verdict = "same" if r else "DIFFERENT"
    echo(f"{verdict}: {r.equal}/{r.compared} shared tensors equal (atol {r.atol:g}), "
         f"{len(r.missing)} only in A, {len(r.unexpected)} only in B")
