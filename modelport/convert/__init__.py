"""Conversion: open a source, resolve its config once, adapt its layout once, cast, and write the
target atomically, one tensor at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dtypes, formats
from .._version import __version__
from ..atomic import atomic_output, check_destination, check_overlap, write_marker
from ..errors import DifferenceFound, MissingDependencyError, UnsupportedError
from ..formats._untrusted import check_regular
from ..formats.base import Format, Options, TensorSource, WriteOptions
from ..models.sources import open_source, read_config_file
from ..models.spec import LoadSpec
from . import layouts
from . import manifest as manifest_module
from .cast import CastSource
from .export_options import ExportOptions
from .manifest import DIR_NAME, SUFFIX
from .verifying import VerifySource, verify_source


@dataclass
class Result:
    """What a conversion wrote."""

    dst: Path
    source_format: str
    target_format: str
    tensors: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    aliases: int = 0             # tied names stored once (counted apart from ``tensors``)
    manifest: Path | None = None      # the conversion's manifest, unless it was turned off
    parity: Any = None                # the ParityReport of --verify, when asked
    export: Any = None                # a graph target: the exporter's ExportResult (opset, data file, check)

    def counts(self) -> str:
        """'28 tensors + 1 tied alias', the way convert, diff and inspect all count."""
        return count_phrase(self.tensors, self.aliases)


def count_phrase(tensors: int, aliases: int) -> str:
    """How every command counts: the tensors stored, then tied names apart ("28 tensors + 1 tied alias")."""
    text = f"{tensors} tensor{'s' if tensors != 1 else ''}"
    if aliases:
        text += f" + {aliases} tied alias{'es' if aliases != 1 else ''}"
    return text


def target_format(dst: Path, to: str | None) -> Format:
    if to:
        fmt = formats.get(to)
    else:
        fmt = formats.for_suffix(dst)
        if fmt is None:
            known = ", ".join(f.id for f in formats.all_formats())
            raise UnsupportedError(f"{dst}: cannot tell the target format from the name; pass --to FORMAT (one of: {known})")
    if not fmt.can_write:
        raise UnsupportedError(f"format {fmt.id!r} cannot be written")
    missing = fmt.missing()
    if missing:
        raise MissingDependencyError(f"writing {fmt.id!r} needs {', '.join(missing)}; pip install {' '.join(missing)}")
    return fmt


def config_to_write(source: TensorSource, given: dict | None, target: Format, arch: str | None, dst: Path,
                    assume_config: bool = False) -> dict | None:
    """The config file the target stores, in its spelling: hf a config.json (``--config``, else the
    source's, else inferred from the weights: guesses that change the outputs only with ``assume_config``);
    a format whose layout has a config file of its own (meta: params.json) that file, made by the layout's
    codec from the source's config."""
    if target.config_file == "config.json":
        if given is not None:
            return given
        if source.config is not None:
            return source.config
        from ..models import infer_config

        return infer_config(source, arch, assume_config=assume_config)
    from ..models.families import format_layout

    layout = format_layout(target.id)
    if layout is not None and layout.config is not None:
        return layout.config.to_native(source.config if source.config is not None else given, source.metadata, dst)
    return None


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str | None = None,
    from_: str | None = None,
    dtype: str | None = None,
    shard_size: int | None = None,
    force: bool = False,
    allow_overflow: bool = False,
    options: Options | None = None,
    progress: bool | None = None,
    manifest: bool = True,
    verify: bool | dict = False,
    export: ExportOptions | None = None,
    load: LoadSpec | None = None,
) -> Result:
    """Convert ``src`` to ``dst``. Nothing is written unless the whole conversion succeeds.

    ``dtype`` is fp32 / fp16 / bf16 (or a canonical name); ``shard_size`` in bytes applies to
    sharded targets (hf). ``progress`` shows a bar on stderr; by default only on a terminal.
    ``options`` is read, never changed. ``manifest`` writes the conversion's record
    (:mod:`.manifest`) with the output, in the same atomic step; in a directory output it is the
    marker that says modelport wrote it. ``verify`` runs the written model against the source with the
    parity check before declaring success (a dict passes options to :func:`modelport.parity.parity`); a
    mismatch raises :class:`VerifyFailed` carrying the report, and nothing is kept; a passing report is
    recorded in the manifest and the result.

    Graph targets (onnx, torchscript) export the runnable model ``src`` holds: ``export`` sets how
    (opset, method, exporter, device, static shapes, external data, KV cache; ``dtype`` fills its dtype)
    and ``load`` how the source is loaded to run (engine, input shape and dtype, …; ``arch``, ``config``
    and ``assume_config`` default to ``options``'). Export options for a weights target are refused.
    """
    src, dst = Path(src), Path(dst)
    options = options or Options()
    check_regular(src, "source")        # a missing source is named before anything about the destination
    target = target_format(dst, to)
    if export is not None and not target.graph:
        raise UnsupportedError(f"{dst}: export options apply to onnx and torchscript targets, and this one is "
                               f"{target.id}: drop them")
    check_overlap(src, dst)
    check_destination(dst, force)
    load = load_spec(load, options, from_)
    reference = verify_source(src, load, loaded=not target.graph) if verify else None
    if target.graph:       # a program, not weights: export the runnable model (defaults: opset 17, script/trace)
        return _export(src, dst, target, export or ExportOptions(), load, dtype, force, manifest, reference, verify)
    if dtype is not None:
        dtype = dtypes.canonical(dtype)
    with _hashing_source(src, manifest) as source_hash, open_source(src, from_, options.reading()) as source:
        check_overlap(src, dst, [f.path for f in source.files()])
        given = read_config_file(options.config, source) if options.config is not None else None
        source = layouts.adapt(source, target, options, given)
        if dtype is not None:
            source = CastSource(source, dtype, allow_overflow)
        writing = options.writing(config_to_write(source, given, target, options.arch, dst, options.assume_config),
                                  shard_size)
        total = sum(source.info(n).nbytes for n in source.names())
        show = sys.stderr.isatty() if progress is None else progress
        record = _Record(src, dst, source, target.id, options, dtype, given, source_hash) if manifest else None
        report = None
        with _progress_bar(show and total > 64 << 20, total, dst.name) as advance:
            notes: list[str] = []
            try:
                with atomic_output(dst, force, notes) as tmp:
                    with record.following() if record is not None else contextlib.nullcontext():
                        wrote = target.write(source, tmp, writing, advance)
                    if tmp.is_dir():
                        write_marker(tmp, format=target.id, version=__version__)
                    if verify:
                        report = _verify(reference, tmp, dst, target, verify)
                    if record is not None:
                        record.write(tmp, report, wrote)     # in a directory: the marker, with the manifest in it
                if record is not None:
                    record.commit()
                else:
                    stale = dst.with_name(dst.name + SUFFIX)
                    if dst.is_file() and stale.is_file():
                        stale.unlink()
            except BaseException:
                if record is not None:
                    record.discard()
                raise
        notes += list(source.notes) + list(wrote.notes)
        return Result(dst, source.format, target.id, len(source.names()), total, notes,
                      aliases=len(source.aliases()), manifest=record.final if record is not None else None,
                      parity=report)


class VerifyFailed(DifferenceFound):
    """The written model does not match its source; nothing was kept."""

    def __init__(self, dst: Path, report):
        self.report = report
        div = next((c.first_divergence for c in report.candidates if c.first_divergence), None)
        where = f" ({div.describe()})" if div else ""
        super().__init__(f"{dst}: the converted model does not match the source{where}; nothing was written")


def load_spec(load: LoadSpec | None, options: Options, from_: str | None = None) -> LoadSpec:
    """How the source is loaded to run (export, --verify): ``load``, its architecture, config and
    assume-config filled from the conversion's ``options`` where it leaves them unset, read as ``from_``."""
    load = load or LoadSpec()
    return load.replace(arch=load.arch if load.arch is not None else options.arch,
                        config=load.config if load.config is not None else options.config,
                        assume_config=load.assume_config or bool(options.assume_config),
                        format=load.format or from_)


def _export(src: Path, dst: Path, target: Format, options: ExportOptions, load: LoadSpec, dtype: str | None,
            force: bool, manifest: bool, reference, verify) -> Result:
    """A graph target: export, check against the source (``verify``), record."""
    from .export import export

    if dtype is not None and options.dtype is None:
        options = dataclasses.replace(options, dtype=dtype)
    done = export(src, dst, target.id, options=options, load=load.replace(format=None), force=force)
    report = _verify_export(reference, Path(done.dst), target, verify) if verify else None
    record = manifest_module.write_for_export(src, done, {"passed": True, **report.to_json()} if report else None) \
        if manifest else None
    return Result(done.dst, "runnable", done.format, 0, done.bytes, [f"exported {done.origin} with {done.exporter}"],
                  manifest=record, parity=report, export=done)


def _verify(reference: VerifySource, written: Path, dst: Path, target: Format, verify):
    """Parity of the written model (at its temporary path) against the source; raise when it fails."""
    from ..parity import parity

    report = parity(reference.deferred, reference.candidate(written, target.id),
                    **(verify if isinstance(verify, dict) else {}))
    if not report:
        raise VerifyFailed(dst, report)
    return report


def _verify_export(reference: VerifySource, dst: Path, target: Format, verify):
    """The exporter writes atomically itself: the graph is verified where it was written, and removed
    (with its external data) when it does not match."""
    try:
        return _verify(reference, dst, dst, target, verify)
    except BaseException:
        _remove_export(dst)
        raise


def _remove_export(path: Path) -> None:
    """An exported graph, its external-data file, and the genai_config.json that names it."""
    from .onnx_builder import genai_config_of

    for p in (path, path.parent / (path.name + ".data"), genai_config_of(path)):
        if p is not None and p.is_file():
            p.unlink()


class _Record:
    """The manifest of one conversion: the source hashed in a thread while the output is written,
    the manifest written into a directory output, or beside a file output under a temporary name
    that :meth:`commit` renames once the output is in place."""

    def __init__(self, src: Path, dst: Path, source, target_id: str, options: Options, dtype: str | None,
                 config: dict | None = None, hashing=None):
        self.src, self.dst, self.source, self.target_id, self.options, self.dtype = src, dst, source, target_id, options, dtype
        self.config = config
        self.hashing = hashing or manifest_module.BackgroundHash(src)
        self.algorithm = self.hashing.algorithm
        self.followed = None
        self.final: Path | None = None
        self.pending: Path | None = None

    @contextlib.contextmanager
    def following(self):
        """The block within which the writer hashes its output files as it writes them."""
        with manifest_module.following(self.algorithm) as followed:
            self.followed = followed
            yield followed

    def write(self, written: Path, report, wrote=None) -> None:
        parity = None
        if report is not None:
            parity = {"passed": bool(report), **report.to_json()}
        # the record first, while the threads still hash; then the digests
        m = manifest_module.build(src=self.src, dst=self.dst, written=written, source=self.source,
                           target_format=self.target_id, options=self.options, source_files=[],
                           output_files=[], config=self.config, dtype=self.dtype,
                           parity=parity, wrote=wrote)
        known = self.followed.digests() if self.followed is not None else {}   # taken as the writer wrote
        m.output["files"] = manifest_module.hash_files(written, self.algorithm, known)   # the rest (config.json …)
        m.source["files"] = self.hashing.get()
        if written.is_dir():
            manifest_module.write(m, written / DIR_NAME)
            self.final = self.dst / DIR_NAME
        else:
            for f in m.output["files"]:
                f["path"] = self.dst.name
            self.final = self.dst.with_name(self.dst.name + SUFFIX)
            self.pending = self.dst.with_name(f".{self.final.name}.modelport-{os.getpid()}.tmp")
            manifest_module.write(m, self.pending)

    def commit(self) -> None:
        if self.pending is not None:
            os.replace(self.pending, self.final)
            self.pending = None

    def discard(self) -> None:
        if self.pending is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pending.unlink()
        self.final = None


@contextlib.contextmanager
def _hashing_source(src: Path, manifest: bool):
    """The source hashed for the manifest in a thread from the start, beside reading and writing it;
    stopped when the conversion fails."""
    if not manifest:
        yield None
        return
    hashing = manifest_module.BackgroundHash(src, manifest_module.hash_algorithm())
    try:
        yield hashing
    except BaseException:
        hashing.cancel()
        raise


class _progress_bar:
    """A rich progress bar on stderr counting bytes written, or nothing."""

    def __init__(self, show: bool, total: int, label: str):
        self.show, self.total, self.label = show, total, label

    def __enter__(self):
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(f"writing {self.label}", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.show:
            self.bar.stop()


__all__ = ["ExportOptions", "LoadSpec", "Result", "VerifyFailed", "WriteOptions", "convert",
           "load_spec", "target_format"]
