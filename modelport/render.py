"""Plain-text rendering of inspect summaries and diff reports for the terminal."""

from __future__ import annotations

import re

import click

from .convert import count_phrase
from .diff import DiffReport
from .inspect import Summary

# Characters a terminal acts on (C0/C1 controls: ESC sequences that set the title, write the clipboard,
# erase lines), invisible or reordering format characters, and lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


def _escape_char(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text) -> str:
    """``text`` safe to print: every character a terminal would act on shown as an escape (``\\x1b``)."""
    return _UNSAFE.sub(_escape_char, str(text))


def escape_lines(text) -> str:
    """Like :func:`escape`, keeping the newlines of a multi-line block (object trees)."""
    return "\n".join(escape(line) for line in str(text).split("\n"))


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
    def echo(text=""):   # everything from a file is escaped before it reaches the terminal
        click.echo(escape_lines(text))

    echo(f"{s.path}: {s.format}")
    if s.architecture:
        echo(f"architecture: {s.architecture}")
    dtypes = ", ".join(f"{d} {_count(n)}" for d, n in s.dtypes.items())
    buffers = f"   buffers: {_count(s.total_buffers)} ({s.total_buffers:,})" if s.total_buffers else ""
    echo(f"{count_phrase(len(s.tensors) - s.aliases, s.aliases)}   parameters: {_count(s.total_params)} "
         f"({s.total_params:,}){buffers}   size: {human(s.total_bytes)}   dtypes: {dtypes or '-'}")
    for note in s.notes:
        echo(f"note: {note}")
    if s.tensors:
        echo("")
        rows = s.tensors if show_all else s.tensors[:limit]
        width = min(max(len(escape(t.name)) for t in rows), 70)
        echo(f"{'name':<{width}}  {'shape':<20} {'dtype':<9} {'bytes':>10}")
        for t in rows:
            shape = "[" + ", ".join(map(str, t.shape)) + "]"
            extra = f"  = {escape(t.alias_of)} (tied alias)" if t.alias_of else ("  (buffer)" if t.buffer else "")
            echo(f"{escape(t.name):<{width}}  {shape:<20} {t.dtype:<9} {human(t.bytes):>10}{extra}")
        if len(rows) < len(s.tensors):
            echo(f"… {len(s.tensors) - len(rows)} more (--all lists every tensor)")
    if len(s.modules) > 1:
        echo("\nmodules (parameters):")
        for m in s.modules:
            if m.name:
                echo(f"  {'  ' * (m.depth - 1)}{escape(m.name.rsplit('.', 1)[-1]):<24} {_count(m.params):>9}  "
                     f"({m.tensors} tensor{'s' if m.tensors != 1 else ''})")
    if s.metadata:
        echo("\nmetadata:")
        for k, v in s.metadata.items():
            v = escape(v)
            echo(f"  {escape(k)}: {v if len(v) < 100 else v[:97] + '…'}")
    if s.side_files:
        echo(f"\nother files: {escape(', '.join(s.side_files))}")
    if s.model:
        echo("\nrebuilt as a PyTorch module:")
        echo(s.model)
    if s.tree:
        echo("\nobject tree:")
        echo(s.tree)


def print_diff(r: DiffReport) -> None:
    def echo(text=""):
        click.echo(escape(text))

    for note in r.notes:
        echo(f"note: {note}")
    for name in r.missing:
        echo(f"only in A: {name}")
    for name in r.unexpected:
        echo(f"only in B: {name}")
    for line in r.matched:
        echo(f"matched: {line}")
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
    compared = count_phrase(r.compared - r.aliases, r.aliases)
    equal = "all equal" if r.equal == r.compared else f"{count_phrase(r.equal - r.aliases_equal, r.aliases_equal)} equal"
    how = f"atol {r.atol:g}" + (", values compared across dtypes" if r.cast else "")
    echo(f"{verdict}: {compared} compared, {equal} ({how}); {len(r.missing)} only in A, {len(r.unexpected)} only in B")


def print_convert(result, src, echo=click.echo) -> None:
    """What ``modelport convert`` (and each batch job) says about a conversion it finished: notes, the
    verification, what was written and the manifest."""
    exported = result.export
    if exported is None:
        for note in result.notes:
            echo(f"note: {escape(note)}", err=True)
    if result.parity is not None:
        tol = result.parity.candidates[0].tolerance
        echo(escape(f"verified: matches {src} on {len(result.parity.inputs)} input sets ({tol.describe()}, "
                    f"torch on {result.parity.torch_device})"))
    if exported is None:
        echo(escape(f"wrote {result.dst} ({result.target_format}): {result.counts()}, {human(result.bytes)}"))
    else:
        extra = f", data in {exported.external_data.name}" if exported.external_data else ""
        opset_text = f", opset {exported.opset}" if exported.opset else ""
        checked = (f"matches eager within {exported.max_abs_diff:.2g}" if exported.max_abs_diff is not None
                   else "built, not run against eager (--verify runs parity)")
        echo(f"wrote {exported.dst} ({exported.format}{opset_text}{extra}): {human(exported.bytes)} from "
             f"{exported.origin}; {checked}")
        for note in exported.notes if exported.format == "onnx" else ():
            echo(f"note: {note}")
    if result.manifest is not None:
        echo(escape(f"manifest: {result.manifest}"))

