"""``modelport view``: show a model in Netron, served from this process on localhost.

Netron (the optional extra ``view``) serves one model per server; :func:`view` serves one and
blocks until Ctrl-C or SIGTERM, then stops the server and removes every temporary file, so
nothing is left behind. What is shown:

* an ONNX file as it is (with its external data files), or, with
  ``graph_only`` or above :data:`GRAPH_ONLY_ABOVE` bytes of weights, a temporary copy whose
  initializers keep their names, dtypes and shapes but no data, so a 7B graph opens at once;
* a TorchScript, safetensors, ``.pt`` or ``.t7`` file as it is;
* a model directory's weights file, as its source lists its files (``TensorSource.files``): its shard
  index with the shards it names when it has one (an HF directory), else its first weights file (a Meta
  directory's first shard);
* with ``as_onnx``, a weights-only source exported to ONNX first (the graph-formats exporter).

What is served. Netron's page fetches ``/data/<name>``, and Netron's own server answers that with any
file below the shown file's directory. Here the server is modelport's: it answers ``/data/`` only
with the model's own files (:func:`stage`: the file, its external data, its shard index and shards),
each hard-linked (else symbolically linked, its inode pinned) into a private temporary directory
(mode 0700, ``modelport-view-<pid>-*``), and only to requests whose ``Host`` names a loopback
address with the port (``localhost``, ``127.0.0.1``, ``[::1]``) or the address passed as ``host``: a
page on another site that rebinds its DNS name to 127.0.0.1 gets 403. A temporary directory left by
a view that was killed (its process gone) is removed by the next view.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .atomic import process_alive
from .errors import FormatError, MissingDependencyError, UnsupportedError

GRAPH_ONLY_ABOVE = 1 << 30        # bytes of ONNX weights above which only the graph is served
WORKDIR_PREFIX = "modelport-view-"   # + "<pid>-<random>" in the temporary directory
_WORKDIR = re.compile(re.escape(WORKDIR_PREFIX) + r"(?P<pid>\d+)-")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
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
    external: list[str] = field(default_factory=list)   # an ONNX file's external data locations
    served: list[Path] = field(default_factory=list)    # files served beside ``file`` (the weight files of an index)


def is_onnx(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _ONNX_SUFFIXES


def _load_graph(path: Path):
    """The graph without its initializers' inline bytes (what is shown of them is their shapes and locations)."""
    from .formats._onnxproto import skeleton

    onnx = require("onnx", extra="cpu")
    raw, _ = skeleton(path)
    try:
        model = onnx.ModelProto()
        model.ParseFromString(raw)
        return model
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
                f = _external_file(path, loc)
                total += f.stat().st_size if f is not None and f.is_file() else 0
    return total


def _external_file(path: Path, location: str) -> Path | None:
    """The external data file ``location`` of the ONNX file ``path`` when it lies inside its directory."""
    from .formats._untrusted import inside

    try:
        return inside(path.parent, location, "external data file")
    except FormatError:
        return None


def external_locations(model) -> list[str]:
    """Every external data location an ONNX model names, once each, in order."""
    seen: dict[str, None] = {}
    for graph in _graphs(model.graph):
        for init in graph.initializer:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc:
                seen.setdefault(loc)
    return list(seen)


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


def _weights_file_of(directory: Path) -> tuple[Path, str, list[Path]]:
    """The file Netron opens for a model directory, as the directory's source lists its files: its index
    when it has one (served with the weight files it names), else its first weights file."""
    from . import formats

    with formats.open(directory) as source:
        files, kind = source.files(), source.format
    weights = [f.path for f in files if f.role == "weights"]
    index = next((f.path for f in files if f.role == "index"), None)
    if index is not None:
        return index, kind, weights
    if weights:
        return weights[0], kind, []
    raise UnsupportedError(f"{directory}: a {kind} directory has no single file Netron can show; view one of its files")


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
            f, kind, served = _weights_file_of(path)
            return Shown(f, path, kind, [f"showing {f.name} of the {kind} directory"], served=served)
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
    return Shown(onnx_path, path, origin_kind, notes, external_locations(model))


def _recognised(path: Path) -> None:
    """A file modelport reads (or TorchScript, which Netron draws): else a clear error."""
    from . import formats

    try:
        formats.detect(path)
    except FormatError:
        if path.suffix.lower() in (".pt", ".pth", ".ptl", ".t7", ".safetensors", ".bin", ".torchscript"):
            return
        raise


# -- what is served: the model's own files, in a private directory -------------------------------

@dataclass
class Staged:
    """The files the server may answer ``/data/<name>`` with: ``directory / name`` for each name in
    ``pins``, whose (device, inode) must still be the one staged."""

    directory: Path
    main: str                                 # the name Netron's page opens
    pins: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def read(self, name: str) -> bytes | None:
        """The bytes of a staged file, or None for any other name (or a file swapped since staging)."""
        name = os.path.normpath(name)
        pin = self.pins.get(name)
        if pin is None:
            return None
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != pin:
                return None
            os.set_blocking(fd, True)
            return f.read()


def model_files(shown: Shown) -> dict[str, Path]:
    """The files Netron may fetch to show ``shown.file``, by the name its page asks for: the file itself,
    an ONNX file's external data, the weight files served beside a shard index (``shown.served``). Names
    that lead outside the file's directory are refused (FormatError)."""
    from .formats._untrusted import inside

    f = shown.file
    origin = Path(shown.origin)
    files = {f.name: inside(origin, f.name, "weights file") if origin.is_dir() else f}   # not a link out of it
    if shown.kind in ("onnx", "exported"):
        for loc in shown.external:
            files[os.path.normpath(loc)] = inside(f.parent, loc, "external data file")
    for other in shown.served:
        rel = os.path.relpath(other, f.parent)
        files[os.path.normpath(rel)] = inside(f.parent, rel, "weights file")
    return files


def stage(shown: Shown, directory: Path) -> Staged:
    """Link the model's own files into the new private ``directory``: a hard link where the filesystem
    allows it, else a symbolic link to the resolved file whose inode is pinned. A missing external
    data file is left out with a note (Netron then shows the graph without it)."""
    directory.mkdir(mode=0o700)
    staged = Staged(directory, shown.file.name)
    for name, src in model_files(shown).items():
        real = Path(os.path.realpath(src))
        try:
            st = os.stat(real)
        except OSError:
            staged.notes.append(f"{src} is missing; Netron shows the model without it")
            continue
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{src}: not a regular file (a pipe, device, socket or directory); view serves only files")
        dst = directory / name
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.link(real, dst, follow_symlinks=False)
        except OSError:               # another filesystem, or a file the kernel will not let us link
            os.symlink(real, dst)
        staged.pins[name] = (st.st_dev, st.st_ino)
    return staged


def remove_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Remove this user's ``modelport-view-<pid>-*`` directories whose process is gone (a view killed
    with SIGKILL, a power cut). Directories of running views, other users' and links are left alone."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _WORKDIR.match(entry.name)
        if not m:
            continue
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        pid = int(m.group("pid"))
        mine = st.st_uid == os.getuid() if hasattr(os, "getuid") else True
        if not stat.S_ISDIR(st.st_mode) or not mine or pid == os.getpid() or process_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


# -- the server ----------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` headers answered: the loopback names with the port, and ``host`` itself unless it is a
    wildcard (0.0.0.0 or ::, which no honest request names)."""
    names = set(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return frozenset(f"{n}:{port}".lower() for n in names)


def _handler(netron, staged: Staged, origin: str, hosts: frozenset[str]):
    """Netron's request handler (its page, scripts and fonts) with modelport's files and Host check."""
    netron_handler = netron.server._HTTPRequestHandler

    class Files:
        """What Netron's handler asks of its content: the file's name for the page (pasted into its HTML by
        Netron, so escaped here: a file named ``x"><script>…`` stays text), bytes for /data/."""

        data = bytearray()
        base = html.escape(staged.main, quote=True)
        identifier = base
        name = html.escape(origin, quote=True)
        read = staged.read

    class Handler(netron_handler):
        content = Files

        def do_GET(self):
            if (self.headers.get("Host") or "").lower() not in hosts:
                body = b"403 forbidden: this server answers only requests to localhost\n"
                self.send_response(403)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return
            super().do_GET()

    return Handler


class Server:
    """Netron's page and the staged files on ``host:port``, from a thread of this process."""

    def __init__(self, staged: Staged, host: str = "127.0.0.1", port: int | None = None, origin: str | None = None):
        netron = require("netron", extra="view")
        import http.server
        import socketserver

        class HTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            block_on_close = False

            # a browser closing a connection mid-transfer is normal: no traceback on the terminal for it
            def handle_error(self, request, client_address):
                pass

        # the Host names answered carry the port, known once bound: until then (before serving) none is
        placeholder = _handler(netron, staged, origin or staged.main, frozenset())
        try:
            self._httpd = HTTPServer((host, port or 0), placeholder)
        except OSError as exc:
            raise UnsupportedError(f"cannot serve on {host}:{port or 0} ({exc.strerror}); pass another --port, "
                                   "or none for a free one") from exc
        self.address = self._httpd.server_address[:2]
        self.hosts = allowed_hosts(host, self.address[1])
        self._httpd.RequestHandlerClass = _handler(netron, staged, origin or staged.main, self.hosts)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else self.address[0]    # a wildcard is no Host to ask for
        self.url = f"http://{shown}:{self.address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="modelport-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def view(path: Path, *, host: str = "127.0.0.1", port: int | None = None, browser: bool = True,
         graph_only: bool = False, as_onnx: bool = False, echo: Callable[[str], None] = print,
         ready: Callable[[str], None] | None = None, stop: threading.Event | None = None, arch=None,
         config=None) -> int | None:
    """Serve ``path`` in Netron until Ctrl-C, SIGTERM or ``stop`` is set; then stop the server
    and remove every temporary file. Returns the signal that stopped it (None when ``stop`` did)."""
    stop = stop or threading.Event()
    received: list[int] = []
    remove_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
    server = None
    try:
        shown = prepare(Path(path), workdir, graph_only=graph_only, as_onnx=as_onnx, arch=arch, config=config)
        staged = stage(shown, workdir / "served")
        for note in shown.notes + staged.notes:
            echo(f"note: {note}")
        with _stop_on_signals(received):
            server = Server(staged, host, port, origin=Path(shown.origin).name)
            if not is_loopback(host):
                echo(f"warning: --host {host} is not a loopback address: anyone who can reach this machine on port "
                     f"{server.address[1]} can read {Path(shown.origin).name}; serve on 127.0.0.1 unless you mean that")
            echo(f"serving {shown.origin} in Netron at {server.url}  (Ctrl-C stops)")
            if ready is not None:
                ready(server.url)
            if browser:
                import webbrowser

                with contextlib.suppress(Exception):   # no browser here is not an error: the URL is printed
                    webbrowser.open(server.url)
            while not received and not stop.wait(0.2):
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
def _stop_on_signals(received: list[int]):
    """While serving, Ctrl-C and SIGTERM (however many) are appended to ``received`` instead of raising (the
    serving loop polls it). The handler takes no lock: ``stop.set()`` there could wait forever on the lock of
    an ``Event.wait`` the same thread was inside when a second signal came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        received.append(signum)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["GRAPH_ONLY_ABOVE", "Server", "Shown", "Staged", "graph_only_copy", "prepare", "remove_stale_workdirs",
           "stage", "view"]
