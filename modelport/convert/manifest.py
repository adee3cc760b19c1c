"""The conversion manifest: a small JSON record of what one ``convert`` read, did and wrote.

It lies beside a file output as ``<output>.modelport.json`` and inside a directory output as
``.modelport.json`` (:data:`DIR_NAME`): there it is the marker (:data:`modelport.atomic.MARKER`)
that says modelport wrote the directory, with the marker's fields, so ``--force`` may replace it.
With ``--no-manifest`` a directory output keeps the bare marker. It holds the source and output files with their sha256, the formats, layouts and
architecture, every transform the layout mapping, cast and writer applied (as they recorded
them), the versions of the packages involved, the ONNX opset where there is one, and the parity
verdict with its metrics when ``--verify`` ran. :func:`verify` re-hashes the files it lists.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import MARKER
from ..errors import FormatError

SCHEMA = "modelport.manifest/1"
DIR_NAME = MARKER                    # inside a directory output: the marker, holding the manifest
SUFFIX = ".modelport.json"           # beside a file output: <output>.modelport.json
PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "safetensors", "numpy")
_CHUNK = 4 << 20


def find(path: Path) -> Path | None:
    """The manifest that describes ``path`` (a converted file or directory), if one lies there."""
    path = Path(path)
    m = path / DIR_NAME if path.is_dir() else path.with_name(path.name + SUFFIX)
    return m if m.is_file() else None


# -- hashing ------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])   # hashlib releases the GIL on large buffers
    return h.hexdigest()


def files_of(path: Path, skip: tuple[str, ...] = (DIR_NAME,)) -> list[tuple[str, Path]]:
    """(name relative to ``path``'s parent or to the directory, file) for a file or every file of a
    directory, sorted; the manifest itself is skipped."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.relative_to(path).as_posix() not in skip:
            out.append((p.relative_to(path).as_posix(), p))
    return out


def hash_files(path: Path) -> list[dict]:
    """[{path, bytes, sha256}] for ``path`` (a file or a directory's files), hashed two at a time."""
    files = files_of(path)
    results: list[dict | None] = [None] * len(files)

    def work(i: int) -> None:
        rel, p = files[i]
        results[i] = {"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(work, range(len(files))))
    return [r for r in results if r is not None]


class BackgroundHash:
    """Hash a file's or directory's files in a thread (the source while the conversion writes; the
    output beside what is left of the source's)."""

    def __init__(self, path: Path):
        self.path, self.result, self.error = Path(path), None, None
        self._thread = threading.Thread(target=self._run, name="modelport-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = hash_files(self.path)
        except OSError as exc:   # reported when the manifest is written
            self.error = exc

    def get(self) -> list[dict]:
        self._thread.join()
        if self.error is not None:
            raise FormatError(f"{self.path}: cannot hash it for the manifest ({self.error})")
        return self.result or []


# -- what the conversion did ---------------------------------------------------------------

def _chain(source) -> list:
    """``source`` and every source it wraps, outermost first."""
    out = []
    while source is not None and source not in out:
        out.append(source)
        source = getattr(source, "inner", None)
    return out


def transforms_applied(source, target_format: str, written: Path, options) -> list[dict]:
    """Every transform of this conversion, as the layout mapping and the cast recorded them, plus
    the shard merges and splits that the source's and the output's files show."""
    chain = _chain(source)
    out: list[dict] = []
    innermost = chain[-1]
    shards = getattr(innermost, "shard_paths", None)
    if callable(shards):
        files = shards()
        if len(files) > 1:
            kind = "merge_model_parallel_shards" if innermost.format == "meta" else "join_weight_shards"
            out.append({"op": kind, "files": [Path(f).name for f in files]})
    for s in reversed(chain):
        out.extend(getattr(s, "applied", None) or [])
    tied = {t["tensor"] for t in out if t["op"] == "tie"}
    for alias, kept in source.aliases().items():   # ties the source holds, kept as one tensor by the writer
        if alias not in tied:
            out.append({"op": "tie", "tensor": alias, "to": kept})
    if target_format == "meta" and (options.shards or 1) > 1:
        out.append({"op": "split_model_parallel_shards", "shards": int(options.shards)})
    if target_format == "hf" and (written / "model.safetensors.index.json").is_file():
        weight_map = json.loads((written / "model.safetensors.index.json").read_text())["weight_map"]
        out.append({"op": "split_weight_shards", "files": sorted(set(weight_map.values()))})
    return out


def versions() -> dict[str, str]:
    """modelport's version and those of the packages involved that are installed (not imported)."""
    from importlib import metadata

    from .. import __version__

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
        from .. import __version__

        # the marker's fields first (a directory's manifest is its marker), then the record
        return {"written_by": "modelport", "version": __version__, "format": self.output["format"],
                "schema": self.schema, "created": self.created, "source": self.source, "output": self.output,
                "transforms": self.transforms, "options": self.options, "opset": self.opset,
                "parity": self.parity, "versions": self.versions}


def build(*, src: Path, dst: Path, written: Path, source, target_format: str, options, source_files: list[dict],
          output_files: list[dict] | None = None,
          dtype: str | None = None, opset: int | None = None, parity: dict | None = None) -> Manifest:
    """The manifest of a conversion whose output lies (still under its temporary name) at ``written``
    and will be renamed to ``dst``."""
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
        transforms=transforms_applied(source, target_format, written, options),
        versions=versions(),
        opset=opset,
        parity=parity,
        options={k: v for k, v in {"dtype": dtype, "layout": options.layout, "shards": options.shards,
                                   "strip_prefix": options.strip_prefix, "arch": options.arch,
                                   "config": str(Path(options.config).resolve()) if options.config else None}.items()
                 if v is not None},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_for_export(src: Path, result, parity: dict | None = None) -> Path:
    """The manifest of a graph export (``convert … --to onnx|torchscript``), written beside its output
    once the exporter has put the output in place (the exporter's own atomic step comes first)."""
    import os

    dst = Path(result.dst)
    files = [{"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
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
    """The manifest that describes ``path`` (a converted file or directory), or None when there is
    none (a bare marker, written with ``--no-manifest``, is none)."""
    m = find(path)
    if m is None:
        return None
    try:
        return load(m)
    except FormatError:
        return None


def load(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / DIR_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable modelport manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise FormatError(f"{path}: not a modelport manifest (schema {SCHEMA!r} expected)")
    return data


# -- checking a manifest again -------------------------------------------------------------

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
class VerifyReport:
    manifest: str
    files: list[FileCheck]
    parity: dict | None = None          # the re-run parity check's JSON, when it ran
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        parity_ok = self.parity is None or bool(self.parity.get("passed", self.parity.get("ok", True)))
        return all(f.ok for f in self.files) and parity_ok

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "ok": bool(self),
                "files": [{**f.__dict__, "ok": f.ok} for f in self.files], "parity": self.parity, "notes": self.notes}


def rerun_parity(data: dict) -> dict:
    """The parity check a manifest records, run again on the same seed and input shapes."""
    from ..parity import parity

    recorded = data["parity"]
    inputs = recorded.get("inputs") or []
    kwargs = {"seed": recorded.get("seed", 0), "new_tokens": recorded.get("new_tokens", 16)}
    if inputs and all("seq_len" in i for i in inputs):
        kwargs["seq_lens"] = tuple(i["seq_len"] for i in inputs)
        kwargs["batch"] = inputs[0].get("shapes", {}).get("input_ids", [2])[0]
    options = data.get("options", {})
    reference, candidate = _runnables(data["source"]["path"], data["output"]["path"], data["output"].get("format"),
                                      options.get("arch"), options.get("config"))
    report = parity(reference, candidate, **kwargs)
    return {"passed": bool(report), **report.to_json()}


def _runnables(source: str, output: str, output_format: str | None, arch, config):
    """The source and the output as runnable models, built as ``convert --verify`` built them: weights
    written without a config run with the config of the source (its config.json or params.json), not a
    guess, so a weights-only output needs no --config."""
    from ..models.runnable import load_runnable

    reference = load_runnable(source, arch=arch, config=config)
    if output_format in ("onnx", "torchscript"):
        return reference, load_runnable(output, format=output_format)
    hf_config = getattr(getattr(reference.module, "config", None), "to_hf_config", None)
    return reference, load_runnable(output, format=output_format, arch=arch,
                                    config=hf_config() if hf_config is not None else config)


def verify(manifest_file: Path, rerun=rerun_parity) -> VerifyReport:
    """Re-hash every file the manifest lists; re-run the parity check (``rerun``, given the manifest's
    JSON) when one ran at conversion."""
    data = load(manifest_file)
    checks: list[FileCheck] = []
    for role in ("source", "output"):
        entry = data[role]
        base = Path(entry["path"])
        root = base if entry.get("directory") else base.parent
        for f in entry.get("files", []):
            p = root / f["path"]
            actual = sha256_file(p) if p.is_file() else None
            checks.append(FileCheck(role, str(p), f["sha256"], actual))
    report = VerifyReport(str(manifest_file), checks)
    if data.get("parity") is not None:
        report.parity = rerun(data)
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
    lines.append(f"files: {len(out.get('files', []))} output, {len(src.get('files', []))} source, sha256 recorded "
                 "(`modelport verify` checks them)")
    return lines


__all__ = ["DIR_NAME", "SUFFIX", "BackgroundHash", "Manifest", "build", "find", "load", "summary",
           "verify", "read", "write"]
