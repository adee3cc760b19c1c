"""The conversion manifest: a small JSON record of what one ``convert`` read, did and wrote.

It lies beside a file output as ``<output>.modelport.json`` and inside a directory output as
``.modelport.json`` (:data:`DIR_NAME`): there it is the marker (:data:`modelport.atomic.MARKER`)
that says modelport wrote the directory, with the marker's fields, so ``--force`` may replace it.
With ``--no-manifest`` a directory output keeps the bare marker. It holds the source and output files with their content hash (blake3 when installed, else sha256; each entry names it), the formats, layouts and
architecture, every transform the layout mapping, cast and writer applied (as they recorded
them), the versions of the packages involved, the ONNX opset where there is one, and the parity
verdict with its metrics when ``--verify`` ran. :func:`verify` re-hashes the files it lists.

A manifest read back is untrusted: :func:`load_manifest` (in :mod:`.manifest_schema`) checks it
against a schema of expected types before anything uses it, and :func:`verify` hashes only regular
files inside the manifest's directory or inside the source the user confirms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import MARKER
from ..errors import FormatError, ModelportError
from ..formats._untrusted import is_regular_inside
from .hashing import HASHES, BackgroundHash, file_entry, following, hash_algorithm, hash_file, hash_files, recorded_digest  # noqa: F401
from .manifest_schema import SCHEMA, BareMarker, load_manifest

DIR_NAME = MARKER                    # inside a directory output: the marker, holding the manifest
SUFFIX = ".modelport.json"           # beside a file output: <output>.modelport.json
PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "safetensors", "numpy")


def find(path: Path) -> Path | None:
    """The manifest that describes ``path`` (a converted file or directory), if one lies there."""
    path = Path(path)
    m = path / DIR_NAME if path.is_dir() else path.with_name(path.name + SUFFIX)
    return m if m.is_file() else None


# -- what the conversion did ---------------------------------------------------------------

def _chain(source) -> list:
    """``source`` and every source it wraps, outermost first."""
    out = []
    while source is not None and source not in out:
        out.append(source)
        source = getattr(source, "inner", None)
    return out


def transforms_applied(source, wrote=None) -> list[dict]:
    """Every transform of this conversion, as the layout mapping and the cast recorded them, plus
    the shard merges the source's files show and the splits the writer reported (``wrote``, the
    target's :class:`~modelport.formats.base.WriteResult`)."""
    chain = _chain(source)
    out: list[dict] = []
    innermost = chain[-1]
    weights = [f.path for f in innermost.files() if f.role == "weights"]
    if len(weights) > 1:
        kind = "merge_model_parallel_shards" if innermost.model_parallel else "join_weight_shards"
        out.append({"op": kind, "files": [Path(f).name for f in weights]})
    for s in reversed(chain):
        out.extend(getattr(s, "applied", None) or [])
    tied = {t["tensor"] for t in out if t["op"] == "tie"}
    for alias, kept in source.aliases().items():   # ties the source holds, kept as one tensor by the writer
        if alias not in tied:
            out.append({"op": "tie", "tensor": alias, "to": kept})
    if wrote is not None and len(wrote.shards) > 1:
        if wrote.model_parallel:
            out.append({"op": "split_model_parallel_shards", "shards": len(wrote.shards)})
        else:
            out.append({"op": "split_weight_shards", "files": sorted(Path(f).name for f in wrote.shards)})
    return out


def versions() -> dict[str, str]:
    """modelport's version and those of the packages involved that are installed (not imported)."""
    from importlib import metadata

    from .._version import __version__

    out = {"modelport": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class Manifest:
    source: dict
    output: dict
    transforms: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    opset: int | None = None
    parity: dict | None = None
    options: dict = field(default_factory=dict)
    created: str = ""
    schema: str = SCHEMA

    def to_json(self) -> dict:
        from .._version import __version__

        # the marker's fields first (a directory's manifest is its marker), then the record
        return {"written_by": "modelport", "version": __version__, "format": self.output["format"],
                "schema": self.schema, "created": self.created, "source": self.source, "output": self.output,
                "transforms": self.transforms, "options": self.options, "opset": self.opset,
                "parity": self.parity, "versions": self.versions}


def build(*, src: Path, dst: Path, written: Path, source, target_format: str, options, source_files: list[dict],
          output_files: list[dict] | None = None, config: dict | None = None,
          dtype: str | None = None, parity: dict | None = None, wrote=None) -> Manifest:
    """The manifest of a conversion whose output lies (still under its temporary name) at ``written``
    and will be renamed to ``dst``; ``wrote`` is what the writer reported it wrote. ``config``: the config
    the conversion was given (as read), recorded as JSON so that ``verify`` can check it like any config and run the parity check again."""
    from ..models import detect_arch

    mapped = next((s for s in _chain(source) if hasattr(s, "src_layout")), None)
    src_layout = getattr(mapped, "src_layout", None)
    layout = getattr(mapped, "layout", None)
    arch = detect_arch(source)
    src_lay = getattr(src_layout or layout, "id", None)
    if src_lay is None:
        from .layouts import detect_layout

        found = detect_layout(_chain(source)[-1])
        src_lay = found.id if found else None
    return Manifest(
        source={"path": str(Path(src).resolve()), "format": source.format, "layout": src_lay,
                "directory": Path(src).is_dir(), "files": source_files},
        output={"path": str(Path(dst).resolve()), "format": target_format,
                "layout": getattr(layout, "id", None) or src_lay, "architecture": arch,
                "tensors": len(source.names()), "directory": written.is_dir(), "files": output_files if output_files is not None else hash_files(written)},
        transforms=transforms_applied(source, wrote),
        versions=versions(),
        parity=parity,
        options={k: v for k, v in {"dtype": dtype, "layout": options.layout, "shards": options.shards,
                                   "strip_prefix": options.strip_prefix, "arch": options.arch,
                                   "config": config if options.config else None,
                                   "config_file": str(Path(options.config).resolve()) if options.config else None}.items()
                 if v is not None},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_for_export(src: Path, result, parity: dict | None = None) -> Path:
    """The manifest of a graph export (``convert … --to onnx|torchscript``), written beside its output
    once the exporter has put the output in place (the exporter's own atomic step comes first)."""
    import os

    dst = Path(result.dst)
    files = [file_entry(p.name, p, hash_algorithm())
             for p in [dst] + ([Path(result.external_data)] if result.external_data else [])]
    fmt, layout, arch = _source_kind(Path(src))
    m = Manifest(
        source={"path": str(Path(src).resolve()), "format": fmt, "layout": layout, "directory": Path(src).is_dir(),
                "files": hash_files(src)},
        output={"path": str(dst.resolve()), "format": result.format, "layout": None, "architecture": arch,
                "origin": result.origin, "directory": False, "files": files},
        transforms=[{"op": "export", "exporter": result.exporter, "max_abs_diff_vs_eager": result.max_abs_diff}],
        versions=versions(), opset=result.opset, parity=parity,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    final = dst.with_name(dst.name + SUFFIX)
    pending = dst.with_name(f".{final.name}.modelport-{os.getpid()}.tmp")
    try:
        write(m, pending)
        os.replace(pending, final)
    finally:
        if pending.exists():
            pending.unlink()
    return final


def _source_kind(src: Path) -> tuple[str | None, str | None, str | None]:
    """The format, layout and architecture of an export's source, read from its headers as a conversion
    reads them; None for what cannot be told (a program with no tensor names, say)."""
    from ..errors import ModelportError
    from ..models import detect_arch
    from ..models.sources import open_source
    from .layouts import detect_layout

    try:
        with open_source(src) as source:
            found = detect_layout(source)
            return source.format, found.id if found else None, detect_arch(source)
    except ModelportError:
        return None, None, None


def write(manifest: Manifest, path: Path) -> None:
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")


def read(path: Path) -> dict | None:
    """The well-formed manifest that describes ``path``, or None (none there, a bare marker, or malformed)."""
    return read_with_note(path)[0]


def read_with_note(path: Path) -> tuple[dict | None, str | None]:
    """(the manifest that describes ``path``, None) when one lies there and is well formed; (None, a one-line
    note) when it is malformed; (None, None) when there is none (a bare marker, written with
    ``--no-manifest``, is none)."""
    m = find(path)
    if m is None:
        return None, None
    try:
        return load_manifest(m), None
    except BareMarker:
        return None, None
    except FormatError as exc:
        return None, f"manifest ignored: {exc}"


load = load_manifest     # the name earlier code used


def locate(path: Path) -> Path:
    """The manifest file for ``verify``: ``path`` itself when it ends in ``.json``, else the manifest in the
    directory or beside the file; a FormatError saying what is missing otherwise."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise FormatError(f"{path}: no such file or directory")
    if path.suffix == ".json" and not path.is_dir():
        return path
    m = path / DIR_NAME if path.is_dir() else path.with_name(path.name + SUFFIX)
    if not (m.exists() or m.is_symlink()):
        what = f"{m.name} in the directory" if path.is_dir() else f"{m.name} beside it"
        raise FormatError(f"{path}: has no modelport manifest (no {what}); it was converted with --no-manifest or "
                          "not by modelport, so there is nothing to verify")
    return m


# -- checking a manifest again -------------------------------------------------------------
#
# A manifest on disk is untrusted like any input (modelport did not write it in this process): it is
# checked by load_manifest, its files are looked up only inside the manifest's own directory (the
# output) or inside the source the user confirms, and the parity check it records is run again only
# on built-in families and bounded sizes; a user module or a config outside the manifest's directory
# runs again only when the user names it on the command line.

@dataclass
class FileCheck:
    role: str          # source | output
    path: str
    expected: str
    actual: str | None  # None: missing

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


@dataclass
class Rerun:
    """The parity check to run again: ``parity(reference, candidate, **kwargs)``."""
    reference: Path
    candidate: Path
    kwargs: dict


@dataclass
class VerifyReport:
    manifest: str
    files: list[FileCheck]
    parity: dict | None = None          # the re-run parity check's JSON, when it ran
    notes: list[str] = field(default_factory=list)
    parity_recorded: bool = False

    def __bool__(self) -> bool:
        parity_ok = self.parity is None or bool(self.parity.get("passed", self.parity.get("ok", True)))
        return all(f.ok for f in self.files) and parity_ok

    def summary(self) -> str:
        """One line: how many files match, and what became of the parity check."""
        n, bad = len(self.files), sum(not f.ok for f in self.files)
        line = f"{n} file{'s' * (n != 1)} checked, all match" if not bad else f"{bad} of {n} files changed or missing"
        if self.parity is not None:
            line += "; parity " + ("passed" if self.parity.get("passed") else "FAILED")
        elif self.parity_recorded:
            line += "; parity not run again (see the note)"
        return ("verified: " if self else "NOT verified: ") + line

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "ok": bool(self), "summary": self.summary(),
                "files": [{**f.__dict__, "ok": f.ok} for f in self.files], "parity": self.parity, "notes": self.notes}


def rerun_parity(plan: Rerun) -> dict:
    """The parity check a manifest records, run again on the same seed and input shapes."""
    from .. import formats
    from ..models.spec import LoadSpec
    from ..parity import parity
    from .verifying import verify_source

    kwargs = dict(plan.kwargs)
    fmt = formats.detect(plan.candidate).id          # a graph needs nothing of the source: it is not loaded here
    source = verify_source(plan.reference, LoadSpec(arch=kwargs.pop("arch", None), config=kwargs.pop("config", None)),
                           loaded=not formats.get(fmt).graph)
    candidate = source.candidate(plan.candidate, fmt)
    report = parity(source.deferred, candidate, **kwargs)
    return {"passed": bool(report), **report.to_json()}


def _within(path: Path, home: Path) -> bool:
    try:
        real, base = Path(os.path.realpath(path)), Path(os.path.realpath(home))
    except (OSError, RuntimeError, ValueError):
        return False
    return real == base or base in real.parents


def _entry(root: Path, name: str, role: str, manifest: Path) -> Path:
    """``root / name`` when it is missing or a regular file inside ``root``; a FormatError otherwise (the
    schema already made ``name`` a plain relative path)."""
    path = root / name
    try:
        if not (path.exists() or path.is_symlink()):
            return path
    except OSError as exc:      # a name the filesystem refuses (too long, a loop of links …)
        raise FormatError(f"{manifest}: the {role} file {name[:80]!r} cannot be looked up ({exc.strerror}); "
                          "refusing to hash anything") from None
    if not is_regular_inside(root, path):
        raise FormatError(f"{manifest}: the {role} file {name!r} is not a regular file inside {root} (a link leading out, "
                          "a directory, a pipe or a device); refusing to hash anything")
    return path


def _source(data: dict, home: Path, given: Path | None, notes: list[str]) -> tuple[Path | None, Path | None]:
    """(the root the source's files are named from, the source itself): the one the user gave, or the
    recorded one when it lies inside the manifest's directory; (None, None) otherwise, with a note."""
    entry = data["source"]
    if given is not None:
        given = Path(given)
        if entry["directory"] != given.is_dir():
            raise FormatError(f"{given}: the manifest records a source {'directory' if entry['directory'] else 'file'}; "
                              "pass that as --source")
        return (given if given.is_dir() else given.parent), given
    recorded = Path(entry["path"])
    if recorded.is_absolute() and _within(recorded, home):
        return (recorded if entry["directory"] else recorded.parent), recorded
    if entry["files"] or data.get("parity") is not None:
        what = ("its files and the recorded parity check were" if entry["files"] and data.get("parity") is not None
                else "its files were" if entry["files"] else "the recorded parity check was")
        notes.append(f"the source ({entry['path']}) lies outside the manifest's directory, so {what} not checked; "
                     "pass --source PATH to check them")
    return None, None


def _parity_plan(data: dict, manifest: Path, home: Path, reference: Path | None, arch: str | None, config,
                 notes: list[str], named_source: bool = False) -> Rerun | None:
    """The recorded parity check with only what may run again, or None (with a note) when it may not.
    ``named_source``: the reference is what the user passed as ``--source``."""
    from ..models.families import normalize

    recorded = data.get("parity")
    if recorded is None or reference is None:
        return None
    if not named_source and _is_torchscript(reference):
        notes.append(f"parity not run again: the recorded source {reference} is a TorchScript archive, and running it "
                     "runs its code; pass it as --source to run it")
        return None
    out = data["output"]
    if not out["directory"] and not out["files"]:
        notes.append("parity not run again: the manifest lists no output file")
        return None
    candidate = home if out["directory"] else home / out["files"][0]["path"]
    options = data.get("options") or {}
    if arch is None and options.get("arch") is not None:
        named = options["arch"]
        try:
            arch = normalize(named) if ":" not in named else None
        except ModelportError:
            arch = None
        if arch is None:
            notes.append(f"parity not run again: the conversion used the module {named!r}, which is not a built-in "
                         "family; pass --arch (and --config) to run it again")
            return None
    if config is None and options.get("config") is not None:
        if arch is not None and ":" in arch:        # a module's keyword arguments come from the user, never a file
            notes.append(f"parity not run again: the manifest records a config for the module {arch!r}; pass it "
                         "with --config to run the module again")
            return None
        config = _recorded_config(options, manifest, home, arch, notes)
        if config is None:
            return None
    kwargs = {"seed": recorded.get("seed", 0), "new_tokens": recorded.get("new_tokens", 16), "arch": arch,
              "config": config}
    inputs = recorded.get("inputs") or []
    if inputs and all(isinstance(i.get("seq_len"), int) and i["seq_len"] > 0 for i in inputs):
        kwargs["seq_lens"] = tuple(i["seq_len"] for i in inputs)
        kwargs["batch"] = ((inputs[0].get("shapes") or {}).get("input_ids") or [2])[0] or 2
    return Rerun(reference, candidate, kwargs)


def _is_torchscript(path: Path) -> bool:
    from .. import formats

    try:
        return formats.detect(path).id == "torchscript"
    except ModelportError:
        return False


def _recorded_config(options: dict, manifest: Path, home: Path, arch: str | None, notes: list[str]) -> dict | None:
    """The config a manifest records, checked like any config: a JSON object that the family's config
    accepts, or (older manifests) a config file inside the manifest's directory."""
    from ..models.config import config_from_hf
    from ..models.sources import read_config_file

    config = options["config"]
    if isinstance(config, str):
        path = Path(config)
        if not (path.is_absolute() and _within(path, home) and path.is_file()):
            notes.append(f"parity not run again: the recorded config {config} is not a file inside the manifest's "
                         "directory; pass --config to run it again")
            return None
        config = read_config_file(path)
    try:
        config_from_hf(config, arch, f"{manifest}: the recorded config")
    except ModelportError as exc:
        raise FormatError(f"{manifest}: the recorded config is not usable: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # the config checks assume config.json's types in places (``architectures`` a list …); a value of
        # another type is refused here, before parity reads the same dict
        raise FormatError(f"{manifest}: the recorded config is not usable: a value has an unexpected type "
                          f"({type(exc).__name__}: {str(exc)[:80]})") from None
    return config


def verify(manifest_file: Path, rerun=rerun_parity, *, source: Path | None = None, arch: str | None = None,
           config=None) -> VerifyReport:
    """Re-hash every file the manifest lists; re-run the parity check (``rerun``, given a :class:`Rerun`)
    when one ran at conversion. The output's files are looked up in the manifest's own directory, the
    source's in ``source`` (what the user passed) or in the recorded source when that lies inside the
    manifest's directory. ``arch`` / ``config``: what the user passed to run the check again.

    Every path is checked before anything is hashed: a FormatError refuses the manifest when one is not a
    regular file inside its root, or when the manifest leaves nothing to verify."""
    manifest_file = Path(manifest_file)
    data = load_manifest(manifest_file)
    home = manifest_file.parent
    notes: list[str] = []
    src_root, reference = _source(data, home, source, notes)
    planned: list[tuple[str, Path, str]] = []
    for f in data["output"]["files"]:
        planned.append(("output", _entry(home, f["path"], "output", manifest_file), recorded_digest(f)))
    if src_root is not None:
        files = data["source"]["files"]
        if source is not None and not data["source"]["directory"] and len(files) == 1:
            planned.append(("source", _entry(src_root, Path(source).name, "source", manifest_file),
                            recorded_digest(files[0])))
        else:
            planned += [("source", _entry(src_root, f["path"], "source", manifest_file), recorded_digest(f))
                        for f in files]
    plan = _parity_plan(data, manifest_file, home, reference, arch, config, notes, named_source=source is not None)
    if not planned and plan is None:
        raise FormatError(f"{manifest_file}: nothing to verify (the manifest lists no file that can be checked and no "
                          "parity check that can run again)" + (f"; {notes[0]}" if notes else ""))
    checks = [FileCheck(role, str(p), digest, hash_file(p, algorithm) if p.is_file() else None)
              for role, p, (algorithm, digest) in planned]
    report = VerifyReport(str(manifest_file), checks, notes=notes, parity_recorded=data.get("parity") is not None)
    if plan is not None:
        report.parity = rerun(plan)
    return report


def summary(data: dict) -> list[str]:
    """A few lines saying what a manifest records (for ``inspect``)."""
    src, out = data["source"], data["output"]
    lines = [f"converted from {src['path']} ({src['format']}{', ' + src['layout'] if src.get('layout') else ''}) "
             f"on {data.get('created', '?')} by modelport {data.get('versions', {}).get('modelport', '?')}"]
    counts: dict[str, int] = {}
    for t in data.get("transforms", []):
        counts[t["op"]] = counts.get(t["op"], 0) + 1
    if counts:
        lines.append("transforms: " + ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items()))
    if data.get("opset") is not None:
        lines.append(f"opset: {data['opset']}")
    parity = data.get("parity")
    if parity is not None:
        verdict = parity.get("passed", parity.get("ok"))
        lines.append(f"parity: {'passed' if verdict else 'FAILED' if verdict is not None else 'recorded'}")
    lines.append(f"files: {len(out.get('files', []))} output, {len(src.get('files', []))} source, {'/'.join(sorted({recorded_digest(f)[0] for f in out.get('files', [])})) or 'no'} digests recorded "
                 "(`modelport verify` checks them)")
    return lines


__all__ = ["DIR_NAME", "HASHES", "SUFFIX", "BackgroundHash", "file_entry", "hash_algorithm", "hash_file", "recorded_digest", "Manifest", "Rerun", "VerifyReport", "build", "find", "load",
           "load_manifest", "locate", "read", "read_with_note", "summary", "verify", "write"]
