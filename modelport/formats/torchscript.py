"""torchscript: archives written by ``torch.jit.save`` (scripted or traced modules).

A TorchScript archive is a zip like a ``torch.save`` checkpoint (``<prefix>/data.pkl`` and
``<prefix>/data/<key>`` storages) plus ``<prefix>/constants.pkl``, ``<prefix>/code/`` (the compiled
program as TorchScript source) and optional ``<prefix>/extra/`` files. Sniffing tells it from a
``torch.save`` zip by those members.

Reading. Before torch sees the file, every pickle in the archive goes through the allow-listing
unpickler of the ``pt`` format, extended only with TorchScript's own object classes (``__torch__.…``,
rebuilt here as inert records) and the list/type-tag helpers of ``torch.jit._pickle``: a pickle that
names any other global is refused with :class:`UnsafeContentError` and nothing is loaded. Then
``torch.jit.load`` on the CPU builds the module, and its ``state_dict()`` gives the weights by their
original names; tensors that share one storage view (tied embeddings) are reported as aliases.

torch 2.13 marks ``torch.jit`` deprecated; :func:`quiet_jit` keeps its deprecation notices out of
users' output wherever modelport calls it.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import warnings
from pathlib import Path

from .. import dtypes
from ..errors import FormatError, UnsupportedError, one_line
from . import graphmeta, register
from ._pickle import BadCheckpoint, CheckpointUnpickler, _Safe, check_opcodes
from ._torchzip import ZipReader
from .base import Format, Options, TensorInfo, TensorSource

METADATA_FILE = "modelport.json"     # extra/ file modelport writes: kind, inputs, outputs, origin


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
    """Inert stand-in for a TorchScript class instance: records its state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


def _inert(*args):
    return list(args[0]) if args and isinstance(args[0], (list, tuple)) else (args[0] if args else None)


class ScriptUnpickler(CheckpointUnpickler):
    """The checkpoint unpickler plus what TorchScript's own pickles use, all inert."""

    _JIT_HELPERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_tensor_from_id",
                    "restore_type_tag")

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch.jit._pickle" and name in self._JIT_HELPERS:
            return _Safe(_inert)
        return super().find_class(module, name)


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


def check_pickles(path: Path) -> None:
    """Every pickle of the archive read by the allow-listing unpickler; refuse the file otherwise."""
    archive = _archive(path)
    for name in archive.members:
        if not name.endswith(".pkl"):
            continue
        data = archive.read(name)
        try:
            check_opcodes(data, 0, path)     # memo indices and lengths bounded before CPython's unpickler runs
            unpickler = ScriptUnpickler(io.BytesIO(data), path)
            unpickler.load()
            _check_storage_sizes(path, archive, name, unpickler.storages)
        except BadCheckpoint as exc:
            raise FormatError(f"{path}: {name} is not what a TorchScript archive holds: {exc}") from exc
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                RecursionError, MemoryError) as exc:
            raise FormatError(f"{path}: corrupt {name} ({type(exc).__name__}: {str(exc)[:160]}); "
                              "re-export the TorchScript file") from exc


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


def read_metadata(path: Path) -> dict:
    """modelport's description of the module (``extra/modelport.json``), or {} for other producers' files."""
    names = archive_members(path)
    prefix = archive_prefix(names) or ""
    member = f"{prefix}extra/{METADATA_FILE}"
    if member not in names:
        return {}
    try:
        meta = json.loads(_archive(path).read(member, limit=1 << 20))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: {member} is not valid JSON ({exc})") from exc
    graphmeta.from_torchscript(meta, f"{path}: {member}")     # every field checked where it is first read
    return meta


def load_module(path: Path, device: str = "cpu"):
    """``torch.jit.load`` after the archive's pickles passed the allow-list; eval mode."""
    import torch

    path = Path(path)
    check_pickles(path)
    with quiet_jit():
        try:
            module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, UnicodeDecodeError, IndexError, MemoryError) as exc:   # invalid code or records
            # (MemoryError: std::bad_alloc for a size the records claim; nothing was allocated)
            raise FormatError(f"{path}: torch.jit.load failed ({one_line(exc)}); "
                              "re-export the TorchScript file with this torch version") from exc
    return module.eval()


class TorchScriptSource(TensorSource):
    format = "torchscript"

    def __init__(self, path: Path, options: Options):
        super().__init__(path)
        self.module = load_module(path)
        meta = read_metadata(path)
        prefix = graphmeta.from_torchscript(meta, path).strip_prefix   # a wrapper's attribute name (transformers)
        state = {k.removeprefix(prefix): v for k, v in self.module.state_dict().items()}
        self._tensors: dict = {}
        self._aliases: dict[str, str] = {}
        seen: dict[tuple, str] = {}
        for name, t in state.items():
            if t.device.type != "cpu":
                t = t.cpu()
            try:
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype) \
                    if t.numel() else None
            except RuntimeError as exc:     # a storage the archive does not really hold
                raise FormatError(f"{path}: tensor {name!r} has no readable storage ({one_line(exc)}); "
                                  "the archive is corrupt") from exc
            if key is not None and key in seen:
                self._aliases[name] = seen[key]
                continue
            if key is not None:
                seen[key] = name
            self._tensors[name] = t
        if meta:
            self.metadata = {f"modelport.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        t = self._get(name)
        return TensorInfo(name, dtypes.canonical(t.dtype), tuple(t.shape))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def _get(self, name: str):
        try:
            return self._tensors[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor {name!r} in this TorchScript module") from None

    def read_bytes(self, name: str) -> bytes | memoryview:
        t = self._get(name).detach().contiguous()
        if t.numel() == 0:
            return b""
        import torch

        return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")

    def read(self, name: str):
        return self._get(self._canonical(name)).detach()

    def model_summary(self) -> str | None:
        return f"TorchScript module {self.module.original_name}"

    def close(self) -> None:
        self._tensors = {}


class TorchScript(Format):
    id = "torchscript"
    description = "torch.jit archive (script or trace); pickles allow-listed before torch.jit.load; written by export (--to torchscript)"
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

    def write(self, source: TensorSource, dst: Path, options: Options) -> None:
        raise UnsupportedError(f"{dst}: a TorchScript file holds a program; write it with "
                               "`modelport convert SRC out.pt --to torchscript` (which exports a runnable model)")


register(TorchScript())
