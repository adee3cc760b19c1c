"""torchscript: archives written by ``torch.jit.save`` (scripted or traced modules).

A TorchScript archive is a zip like a ``torch.save`` checkpoint (``<prefix>/data.pkl`` and
``<prefix>/data/<key>`` storages) plus ``<prefix>/constants.pkl``, ``<prefix>/code/`` (the compiled
program as TorchScript source) and optional ``<prefix>/extra/`` files. Sniffing tells it from a
``torch.save`` zip by those members.

Reading (inspect, diff, convert of the weights, view) never runs the archive and never calls
``torch.jit.load``, which would run the program's ``__setstate__`` methods. ``data.pkl`` goes through
the ``pt`` reader's allow-listing unpickler, extended only with TorchScript's own object classes
(``__torch__.…``, rebuilt here as inert records of their attributes) and the list/type-tag helpers of
``torch.jit._pickle``; tensors are views of the zip's storages, as in a ``torch.save`` file. Which
attributes of a module are its parameters and buffers comes from the ``__parameters__`` /
``__buffers__`` lines of its class in ``code/`` (read as text, see :mod:`._tscode`): names come out
as ``state_dict()`` gives them, and tensors that share one storage view (tied embeddings) are
reported as aliases. A module that restores itself with its own ``__setstate__`` keeps its state in a
form only that code understands: it is refused.

Running (parity, ``inspect --run``, verify, export from a TorchScript source) runs the program by
nature, through ``torch.jit.load``. Before that, every pickle passes the same allow-list and the code
is scanned (:func:`check_code`): a ``__setstate__`` / ``__getstate__``, a custom class, or a call that
is not an aten / prim operator (file, storage-mapping and remote operators excluded), one of the
archive's own functions or a TorchScript builtin is refused with :class:`UnsafeContentError` unless
the caller trusts the file (``--trust-torchscript``, ``trust_torchscript=True``, or the
:func:`trusted_torchscript` context).

torch 2.13 marks ``torch.jit`` deprecated; :func:`quiet_jit` keeps its deprecation notices out of
users' output wherever modelport calls it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import warnings
from contextvars import ContextVar
from pathlib import Path

from .. import dtypes
from ..errors import SPELLING, FormatError, UnsafeContentError, UnsupportedError, one_line
from . import graphmeta
from ._registry import register
from ._pickle import BadCheckpoint, CheckpointUnpickler, TensorRef, _Safe, check_opcodes
from ._stream import _write_all
from ._torchzip import ZipReader
from ._tscode import MAX_CODE, module_classes, qualname, scan
from .base import Format, Options, TensorSource, WriteResult
from .pt import PtSource

METADATA_FILE = "modelport.json"     # extra/ file modelport writes: kind, inputs, outputs, origin
MAX_DEPTH = 200                      # modules nested deeper than this are refused
MAX_MODULES = 200_000                # module objects visited while naming tensors (shared ones again)

# Whether TorchScript programs run without their code being checked first (see trusted_torchscript).
TRUST: ContextVar[bool] = ContextVar("modelport_trust_torchscript", default=False)


@contextlib.contextmanager
def trusted_torchscript(trust: bool = True):
    """Within this block, TorchScript archives are run without the code check of :func:`check_code`:
    their programs may read and write files. For files the user vouches for."""
    token = TRUST.set(bool(trust))
    try:
        yield
    finally:
        TRUST.reset(token)


@contextlib.contextmanager
def quiet_jit():
    """torch.jit's deprecation and tracer notices kept out of users' output (modelport reports what matters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        try:
            from torch.jit import TracerWarning

            warnings.simplefilter("ignore", TracerWarning)
        except ImportError:  # pragma: no cover - torch without jit
            pass
        yield


class _ScriptObject:
    """Inert stand-in for a TorchScript object (module or class instance): its class name and the state
    the pickle gives it, nothing run."""

    qualname = "__torch__"

    def __setstate__(self, state):
        self.state = state


class ScriptUnpickler(CheckpointUnpickler):
    """The checkpoint unpickler plus what TorchScript's own pickles use, all inert."""

    _JIT_HELPERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_tensor_from_id",
                    "restore_type_tag")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            full = f"{module}.{name}"
            cls = self._classes.get(full)
            if cls is None:
                cls = self._classes[full] = type("ScriptObject", (_ScriptObject,), {"qualname": full})
            return cls
        if module == "torch.jit._pickle" and name in self._JIT_HELPERS:
            return _Safe(_inert)
        return super().find_class(module, name)


def _check_storage_sizes(path: Path, archive: ZipReader, pickle_name: str, storages: dict) -> None:
    """Every storage a pickle declares is a member of the archive holding at least the bytes it claims:
    torch.jit.load allocates what the pickle declares before it reads the member."""
    stem = pickle_name.removesuffix(".pkl")        # data.pkl -> data/<key>, constants.pkl -> constants/<key>
    if not stem.endswith(("/data", "/constants")) and stem not in ("data", "constants"):
        return                                      # traced_inputs.pkl and others keep storages their own way
    for key, ref in storages.items():
        member = archive.members.get(f"{stem}/{key}")
        if member is None:                          # torch.jit.load reports a missing record itself
            continue
        need = ref.numel * dtypes.get(ref.dtype).itemsize
        if need > member.size:
            raise FormatError(f"{path}: {pickle_name} declares storage {key!r} of {need} bytes, the archive holds "
                              f"{member.size}; the file is corrupt")


def _inert(*args):
    return list(args[0]) if args and isinstance(args[0], (list, tuple)) else (args[0] if args else None)


def _archive(path: Path) -> ZipReader:
    """The archive's members, through the hardened zip reader (sizes and inflation bounded)."""
    return ZipReader(Path(path), Path(path).stat().st_size)


def archive_members(path: Path) -> list[str]:
    return list(_archive(path).members)


def archive_prefix(names: list[str]) -> str | None:
    """The archive's top folder (``ts/``, ``archive/`` …) when it is a TorchScript archive, else None."""
    for n in names:
        parts = n.split("/")
        if len(parts) >= 2 and (parts[1] == "constants.pkl" or parts[1] == "code"):
            return parts[0] + "/"
    return None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def check_pickles(path: Path) -> None:
    """Every pickle of the archive read by the allow-listing unpickler; refuse the file otherwise."""
    archive = _archive(path)
    for name in archive.members:
        if not name.endswith(".pkl"):
            continue
        data = archive.read(name)
        shown = _printable(name)
        try:
            check_opcodes(data, 0, path)     # memo indices and lengths bounded before CPython's unpickler runs
            unpickler = ScriptUnpickler(io.BytesIO(data), path)
            unpickler.load()
            _check_storage_sizes(path, archive, name, unpickler.storages)
        except BadCheckpoint as exc:
            raise FormatError(f"{path}: {shown} is not what a TorchScript archive holds: {exc}") from exc
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
            raise FormatError(f"{path}: corrupt {shown} ({type(exc).__name__}: {_printable(str(exc))[:160]}); "
                              "re-export the TorchScript file") from exc


def _code_texts(archive: ZipReader, prefix: str | None, everywhere: bool) -> tuple[dict[str, str], list[str]]:
    """``{module qualname: source}`` of the archive's code, and what could not be read. ``everywhere``:
    every ``.py`` member under any top folder (what torch could compile), not only ``prefix``'s."""
    texts: dict[str, str] = {}
    problems: list[str] = []
    total = 0
    for name, member in archive.members.items():
        top = name.split("/", 1)[0] + "/"
        q = qualname(name, prefix or "") if not everywhere else qualname(name, top)
        if q is None:
            if everywhere and name.endswith(".py"):
                problems.append(f"code outside code/ ({_printable(name)[:80]})")
            continue
        total += member.size
        if total > MAX_CODE:
            problems.append(f"more than {MAX_CODE >> 20} MiB of code")
            break
        try:
            texts[q if q not in texts else f"{_printable(name)}"] = archive.read(name, limit=MAX_CODE).decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"code that is not UTF-8 text ({_printable(name)[:80]})")
    return texts, problems


_OPS: frozenset[str] | None = None


def script_operators() -> frozenset[str]:
    """The names of the aten and prim operators this torch registers (what TorchScript code may call)."""
    global _OPS
    if _OPS is None:
        import torch

        _OPS = frozenset(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
                         if s.name.split("::", 1)[0] in ("aten", "prim"))
    return _OPS


def check_code(path: Path) -> None:
    """Refuse an archive whose code could do more than compute (see :mod:`._tscode`), before it is loaded."""
    path = Path(path)
    archive = _archive(path)
    texts, findings = _code_texts(archive, archive_prefix(list(archive.members)), everywhere=True)
    for name in archive.members:       # objects of custom classes are restored by their C++ __setstate__
        if name.endswith("pkl") and b"torch.classes" in archive.read(name):      # .pkl and .debug_pkl
            findings.append(f"an object of a custom class in {name.rsplit('/', 1)[-1]}")
    findings += scan(texts, script_operators())
    if findings:
        shown = "; ".join(_printable(f) for f in findings[:3]) + (f" and {len(findings) - 3} more" if len(findings) > 3 else "")
        how = "pass --trust-torchscript" if SPELLING.get() == "cli" else \
            "pass trust_torchscript=True (or run inside modelport.trusted_torchscript())"
        raise UnsafeContentError(f"{path}: refusing to run this TorchScript program: its code has {shown}; running it "
                                 f"could read or write files; {how} if you trust the file (its weights can be read "
                                 "without it)")


def read_metadata(path: Path, archive: ZipReader | None = None) -> dict:
    """modelport's description of the module (``extra/modelport.json``), or {} for other producers' files."""
    archive = archive or _archive(path)
    names = list(archive.members)
    prefix = archive_prefix(names) or ""
    member = f"{prefix}extra/{METADATA_FILE}"
    if member not in names:
        return {}
    try:
        meta = json.loads(archive.read(member, limit=1 << 20))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: {member} is not valid JSON ({exc})") from exc
    graphmeta.from_torchscript(meta, f"{path}: {member}")     # every field checked where it is first read
    return meta


def load_module(path: Path, device: str = "cpu", *, trust_torchscript: bool | None = None):
    """``torch.jit.load`` after the archive's pickles passed the allow-list and its code the check of
    :func:`check_code` (skipped when ``trust_torchscript``, or inside :func:`trusted_torchscript`); eval mode."""
    import torch

    path = Path(path)
    check_pickles(path)
    if not (TRUST.get() if trust_torchscript is None else trust_torchscript):
        check_code(path)
    with quiet_jit():
        try:
            module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, UnicodeDecodeError, IndexError, MemoryError) as exc:   # invalid code or records
            # (MemoryError: std::bad_alloc for a size the records claim; nothing was allocated)
            raise FormatError(f"{path}: torch.jit.load failed ({one_line(exc)}); "
                              "re-export the TorchScript file with this torch version") from exc
    return module.eval()


class _FdWriter:
    """A file object over a descriptor: every byte written, a full disk raised as OSError(ENOSPC)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        _write_all(self.fd, data)
        return len(memoryview(data).cast("B"))


def _state_bytes(module) -> int:
    """Bytes of the module's parameter and buffer storages, each counted once."""
    seen, total = set(), 0
    for t in module.state_dict().values():
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def save_module(module, path: Path, extra_files: dict[str, str]) -> None:
    """``torch.jit.save`` of ``module`` to ``path``, a full disk raised as OSError(ENOSPC).

    torch's own file writer aborts the whole process (SIGABRT) when a write fails, leaving its file
    behind. So it writes the file only when the filesystem has room for twice the module's tensors and
    64 MiB more (``path`` a new or regular file); otherwise torch serialises into memory (the archive
    is then held twice over while it is written) and modelport writes the bytes, failing cleanly.
    What is left is a disk that someone else fills while the file is written."""
    import torch

    path = Path(path)
    need = 2 * _state_bytes(module) + (64 << 20)
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    regular = not path.exists() or (path.is_file() and not path.is_symlink())
    with quiet_jit():
        if regular and free >= need:
            torch.jit.save(module, str(path), _extra_files=extra_files)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            torch.jit.save(module, _FdWriter(fd), _extra_files=extra_files)
        finally:
            os.close(fd)


class TorchScriptSource(PtSource):
    """The weights of a TorchScript archive, read like a ``torch.save`` zip; the program is not run."""

    format = "torchscript"
    unpickler = ScriptUnpickler

    def _data_pickles(self, zr: ZipReader) -> list[str]:
        prefix = archive_prefix(list(zr.members))
        if prefix is None:
            raise FormatError(f"{self.path}: a zip archive without <name>/code/ or <name>/constants.pkl: "
                              "not a TorchScript archive")
        return [f"{prefix}data.pkl"] if f"{prefix}data.pkl" in zr.members else []

    def _build(self, root, strip_prefix: str | None) -> None:
        if not isinstance(root, _ScriptObject):
            raise FormatError(f"{self.path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
        archive = self._zip
        constants = f"{archive_prefix(list(archive.members))}constants.pkl"
        if constants in archive.members:       # not needed for the weights; a hostile one refuses the file
            self._unpickle(archive.read(constants), "constants.pkl", {})
        texts, problems = _code_texts(archive, archive_prefix(list(archive.members)), everywhere=False)
        if problems:
            raise FormatError(f"{self.path}: {problems[0]}; the archive cannot be read")
        try:
            self._classes = module_classes(texts)
        except ValueError as exc:
            raise FormatError(f"{self.path}: {exc}") from exc
        meta = read_metadata(self.path, archive)
        prefix = meta.get("strip_prefix") or strip_prefix or ""
        if not isinstance(prefix, str):
            raise FormatError(f"{self.path}: extra/{METADATA_FILE} gives strip_prefix {prefix!r}, not a string")
        self.root_class = root.qualname
        tensors: dict[str, TensorRef] = {}
        self._walk(root, tensors)
        self._index(tensors, prefix)
        if meta:
            self.metadata = {f"modelport.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}

    def _walk(self, root: _ScriptObject, out: dict[str, TensorRef]) -> None:
        """``state_dict()``'s names: each module's parameters, then its buffers, then its submodules."""
        stack = [(root, "", ())]
        visited = 0
        while stack:
            obj, prefix, path = stack.pop()
            visited += 1
            if visited > MAX_MODULES or len(path) > MAX_DEPTH:
                raise FormatError(f"{self.path}: the module tree is nested too deeply or holds too many modules")
            lists = self._classes.get(obj.qualname)
            where = prefix.rstrip(".") or "the top module"
            if lists is None:
                raise FormatError(f"{self.path}: {where} is a {obj.qualname}, whose class the archive's code does "
                                  "not define as a module; the archive is incomplete")
            state = getattr(obj, "state", None)
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise FormatError(f"{self.path}: {where} ({obj.qualname}) restores itself with its own __setstate__; "
                                  "its weights cannot be read without running that code, which modelport does not do")
            params, buffers = lists
            for names in (params, buffers):
                for name in names:
                    value = state.get(name)
                    if value is None:
                        continue
                    if not isinstance(value, TensorRef):
                        raise FormatError(f"{self.path}: {prefix}{name} is listed as a tensor of {obj.qualname} "
                                          f"but holds a {type(value).__name__}")
                    if prefix + name in out:
                        raise FormatError(f"{self.path}: two tensors are both named {prefix + name!r}")
                    out[prefix + name] = value
            children = [(k, v) for k, v in state.items() if isinstance(v, _ScriptObject) and v.qualname in self._classes]
            for k, child in reversed(children):
                if any(child is p for p in path) or child is obj:
                    raise FormatError(f"{self.path}: module {prefix}{k} contains itself")
                stack.append((child, f"{prefix}{k}.", path + (obj,)))

    def model_summary(self) -> str | None:
        return f"TorchScript module {self.root_class.rsplit('.', 1)[-1]}"


class TorchScript(Format):
    id = "torchscript"
    description = "torch.jit archive (script or trace); weights read without running it; written by export (--to torchscript)"
    suffixes = (".ts", ".torchscript", ".jit")   # .pt stays the pt format's: pass --to torchscript
    runnable = True
    graph = True                   # written by exporting a runnable model, not by copying tensors
    requires = (("torch", "torch"),)

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        try:
            return archive_prefix(archive_members(path)) is not None
        except FormatError:
            return False

    def open(self, path: Path, options: Options) -> TorchScriptSource:
        return TorchScriptSource(path, options)

    def write(self, source: TensorSource, dst: Path, options: Options, progress=None) -> WriteResult:
        raise UnsupportedError(f"{dst}: a TorchScript file holds a program; write it with "
                               "`modelport convert SRC out.pt --to torchscript` (which exports a runnable model)")


register(TorchScript())
