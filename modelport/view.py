"""``modelport view``: show a model in Netron, served from this process on localhost.

Netron (the optional extra ``view``) serves one model per server; :func:`view` serves one and
blocks until Ctrl-C or SIGTERM, then stops the server and removes every temporary file, so
nothing is left behind. What is shown:

* an ONNX file as it is (its external data files are served from beside it), or, with
  ``graph_only`` or above :data:`GRAPH_ONLY_ABOVE` bytes of weights, a temporary copy whose
  initializers keep their names, dtypes and shapes but no data, so a 7B graph opens at once;
* a TorchScript, safetensors, ``.pt`` or ``.t7`` file as it is;
* an HF directory's weights file (its shard index when sharded), a Meta directory's first shard;
* with ``as_onnx``, a weights-only source exported to ONNX first (the graph-formats exporter).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import FormatError, MissingDependencyError, UnsupportedError

GRAPH_ONLY_ABOVE = 1 << 30        # bytes of ONNX weights above which only the graph is served
NETRON_VERSION = "9.3.3"          # the version the browser test draws a graph with (pyproject pins it)
_ONNX_SUFFIXES = (".onnx",)


def require(module: str, extra: str):
    """Import an optional package, or a clear error naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"this step needs the package '{module}' ({exc}); install it with: "
                                     f"pip install 'modelport[{extra}]'") from exc


@dataclass
class Shown:
    """What will be served for a path, and why."""

    file: Path                               # the file Netron opens
    origin: Path                             # what the user asked for
    kind: str                                # onnx | onnx-graph-only | weights | torchscript ...
    notes: list[str] = field(default_factory=list)


def is_onnx(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _ONNX_SUFFIXES


def _load_graph(path: Path):
    onnx = require("onnx", extra="cpu")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds on a corrupt file
        raise FormatError(f"{path}: not a readable ONNX model ({exc})") from exc


def onnx_weight_bytes(path: Path, model=None) -> int:
    """Bytes of an ONNX model's weights: the file itself plus every external data file it names."""
    model = model if model is not None else _load_graph(path)
    total, seen = path.stat().st_size, set()
    for graph in _graphs(model.graph):
        for init in graph.initializer:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                f = path.parent / loc
                total += f.stat().st_size if f.is_file() else 0
    return total


def graph_only_copy(src: Path, dst: Path, model=None) -> int:
    """Write ``src``'s graph to ``dst`` with every initializer a shape-only placeholder (name,
    dtype and dims kept; no data, no external reference). Returns the number of placeholders."""
    onnx = require("onnx", extra="cpu")
    model = model if model is not None else _load_graph(src)
    n = 0
    for graph in _graphs(model.graph):
        for init in graph.initializer:
            dims, dtype, name = list(init.dims), init.data_type, init.name
            init.Clear()
            init.name, init.data_type = name, dtype
            init.dims.extend(dims)
            init.doc_string = "modelport view --graph-only: data left out"
            n += 1
    onnx.save(model, str(dst))
    return n


def _graphs(graph) -> Iterator:
    """A graph and every subgraph held in node attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _weights_file_of(directory: Path) -> tuple[Path, str]:
    from . import formats

    fmt = formats.detect(directory)
    if fmt.id == "hf":
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                     "pytorch_model.bin"):
            if (directory / name).is_file():
                return directory / name, "hf"
    if fmt.id == "meta":
        shards = sorted(directory.glob("consolidated.*.pth"))
        if shards:
            return shards[0], "meta"
    raise UnsupportedError(f"{directory}: a {fmt.id} directory has no single file Netron can show; view one of its files")


def _export_onnx(src: Path, dst: Path, opset: int, arch=None, config=None) -> None:
    """The graph-formats exporter, or a clear error while this version has none."""
    try:
        from .convert.export import export_onnx
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("modelport"):
            raise MissingDependencyError(f"{src}: --as-onnx needs the ONNX exporter, which is not available in this "
                                         "version of modelport yet; export with `torch.onnx.export` and view the .onnx") from exc
        raise
    export_onnx(src, dst, opset=opset, arch=arch, config=config)


def prepare(path: Path, workdir: Path, *, graph_only: bool = False, as_onnx: bool = False,
            graph_only_above: int = GRAPH_ONLY_ABOVE, opset: int = 17, arch=None, config=None) -> Shown:
    """Decide what to serve for ``path``; temporary files go into ``workdir``. ``arch`` and ``config`` build
    the model of bare weights for ``as_onnx`` (as ``convert --arch/--config`` do)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or directory")
    notes: list[str] = []
    if as_onnx and not is_onnx(path):
        exported = workdir / (path.stem + ".onnx")
        _export_onnx(path, exported, opset, arch, config)
        notes.append(f"exported to ONNX (opset {opset}) for viewing")
        onnx_path, origin_kind = exported, "exported"
    elif is_onnx(path):
        onnx_path, origin_kind = path, "onnx"
    else:
        if graph_only:
            raise UnsupportedError(f"{path}: --graph-only works on an ONNX graph; add --as-onnx to export one first")
        if path.is_dir():
            f, kind = _weights_file_of(path)
            return Shown(f, path, kind, [f"showing {f.name} of the {kind} directory"])
        _recognised(path)
        return Shown(path, path, "weights")
    model = _load_graph(onnx_path)
    size = onnx_weight_bytes(onnx_path, model)
    if graph_only or size > graph_only_above:
        if not graph_only:
            notes.append(f"the model holds {size / 1e9:.1f} GB of weights; showing the graph only "
                         "(initializers as shape-only placeholders)")
        copy = workdir / (onnx_path.stem + ".graph.onnx")
        n = graph_only_copy(onnx_path, copy, model)
        notes.append(f"graph only: {n} initializers shown by shape, without data")
        return Shown(copy, path, "onnx-graph-only", notes)
    return Shown(onnx_path, path, origin_kind, notes)


def _recognised(path: Path) -> None:
    """A file modelport reads (or TorchScript, which Netron draws): else a clear error."""
    from . import formats

    try:
        formats.detect(path)
    except FormatError:
        if path.suffix.lower() in (".pt", ".pth", ".ptl", ".t7", ".safetensors", ".bin", ".torchscript"):
            return
        raise


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """Netron serving one file on ``host:port`` from a thread of this process."""

    def __init__(self, file: Path, host: str = "127.0.0.1", port: int | None = None):
        netron = require("netron", extra="view")
        logging.getLogger(netron.__name__).setLevel(logging.WARNING)
        logging.getLogger("netron.server").setLevel(logging.WARNING)
        self._netron = netron
        port = port or free_port(host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((host, port))
        except OSError as exc:
            raise UnsupportedError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port, "
                                   "or none for a free one") from exc
        self.address = netron.serve(str(file), None, address=(host, port), browse=False)
        self.url = f"http://{self.address[0]}:{self.address[1]}"
        # a browser closing a connection mid-transfer is normal: no traceback on the terminal for it
        for thread in getattr(netron.server, "_threads", lambda a: [])(self.address):
            thread.server.handle_error = lambda request, client_address: None

    def stop(self) -> None:
        self._netron.stop(self.address)


def view(path: Path, *, host: str = "127.0.0.1", port: int | None = None, browser: bool = True,
         graph_only: bool = False, as_onnx: bool = False, echo: Callable[[str], None] = print,
         ready: Callable[[str], None] | None = None, stop: threading.Event | None = None, arch=None,
         config=None) -> int | None:
    """Serve ``path`` in Netron until Ctrl-C, SIGTERM or ``stop`` is set; then stop the server
    and remove every temporary file. Returns the signal that stopped it (None when ``stop`` did)."""
    stop = stop or threading.Event()
    received: list[int] = []
    workdir = Path(tempfile.mkdtemp(prefix="modelport-view-"))
    server = None
    try:
        shown = prepare(Path(path), workdir, graph_only=graph_only, as_onnx=as_onnx, arch=arch, config=config)
        for note in shown.notes:
            echo(f"note: {note}")
        with _stop_on_signals(stop, received):
            server = Server(shown.file, host, port)
            echo(f"serving {shown.origin} in Netron at {server.url}  (Ctrl-C stops)")
            if ready is not None:
                ready(server.url)
            if browser:
                import webbrowser

                with contextlib.suppress(Exception):   # no browser here is not an error: the URL is printed
                    webbrowser.open(server.url)
            while not stop.wait(0.2):
                pass
            server.stop()
            server = None
            shutil.rmtree(workdir, ignore_errors=True)
            echo("stopped")
            return received[0] if received else None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, received: list[int]):
    """While serving, Ctrl-C and SIGTERM (however many) set ``stop`` instead of raising; the first is
    appended to ``received``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        if not received:
            received.append(signum)
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["GRAPH_ONLY_ABOVE", "Server", "Shown", "graph_only_copy", "prepare", "view"]
