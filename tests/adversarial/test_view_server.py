"""`modelport view` serves the model and nothing else, to loopback names only: Netron's own server
answered `/data/<path>` with any file below the model's directory (`view ~/model.onnx` served
`~/.ssh/id_rsa`), answered any Host (DNS rebinding), and a killed view left its temporary files."""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelport import view
from modelport.errors import FormatError

from ..conftest import ROOT

# marks, not importorskip: importing them while collecting would grow the test process, whose size the
# measured CLI runs of the other adversarial tests inherit
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("netron") is None, reason="the view extra (netron) is not installed"),
              pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")]


def _mlp_onnx(path: Path, external: bool = False) -> Path:
    """A two-layer MLP (24 -> 40 -> 37) built with onnx.helper from seeded weights, no torch in this
    process; with ``external`` its weights go to ``weights.bin`` beside it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (24, 40)), ("b1", (40,)), ("w2", (40, 37)), ("b2", (37,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 37])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                  size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _home(tmp_path: Path) -> Path:
    """A home directory with a model beside secrets."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (home / "notes.txt").write_text("private\n")
    _mlp_onnx(home / "m.onnx", external=True)
    return home


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


SECRETS = ["/data/.ssh/id_rsa", "/data/notes.txt", "/data/../notes.txt", "/data/%2e%2e/home/notes.txt",
           "/data/..%2fnotes.txt", "/data/%2Fetc%2Fpasswd", "/data//etc/passwd", "/data/m.onnx/../notes.txt"]


@pytest.fixture
def served(tmp_path):
    home = _home(tmp_path)
    shown = view.prepare(home / "m.onnx", tmp_path)
    staged = view.stage(shown, tmp_path / "served")
    server = view.Server(staged)
    yield home, staged, server.address[1]
    server.stop()


def test_only_the_model_and_its_external_data_are_served(served):
    home, staged, port = served
    ok = f"127.0.0.1:{port}"
    assert _get(port, "/data/m.onnx", ok) == (200, (home / "m.onnx").read_bytes())
    assert _get(port, "/data/weights.bin", ok) == (200, (home / "weights.bin").read_bytes())
    for path in SECRETS:
        status, body = _get(port, path, ok)
        assert status == 404 and b"PRIVATE" not in body and b"private" not in body and b"root:" not in body, path
    assert sorted(p.name for p in staged.directory.iterdir()) == ["m.onnx", "weights.bin"]
    assert stat.S_IMODE(staged.directory.stat().st_mode) == 0o700


def test_only_loopback_host_names_are_answered(served):
    _, _, port = served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        status, page = _get(port, "/", host)
        assert status == 200 and b'content="/data/m.onnx"' in page, host
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}",
                 f"127.0.0.1:{port + 1}", "127.0.0.1", f"0.0.0.0:{port}", "", None):
        for path in ("/", "/data/m.onnx", "/index.js"):
            status, body = _get(port, path, host)
            assert status == 403 and b"onnx" not in body, (host, path, status)


def test_a_file_name_cannot_inject_html_into_the_page(tmp_path):
    import urllib.parse

    name = 'm"><img src=x onerror=alert(1)>.onnx'
    src = _mlp_onnx(tmp_path / name)
    server = view.Server(view.stage(view.prepare(src, tmp_path), tmp_path / "served"))
    port = server.address[1]
    try:
        status, page = _get(port, "/", f"127.0.0.1:{port}")
        assert status == 200 and b"<img src=x" not in page and b"&lt;img src=x onerror=alert(1)&gt;" in page
        assert _get(port, "/data/" + urllib.parse.quote(name), f"127.0.0.1:{port}") == (200, src.read_bytes())
    finally:
        server.stop()


def test_a_file_swapped_after_staging_is_not_served(tmp_path, monkeypatch):
    """Where no hard link can be made (another filesystem), the staged symbolic link is checked against
    the inode it was made for: the user's file replaced by a link to a secret is not served."""
    home = _home(tmp_path)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    staged = view.stage(view.prepare(home / "m.onnx", tmp_path), tmp_path / "served")
    assert (tmp_path / "served" / "weights.bin").is_symlink()
    assert staged.read("weights.bin") == (home / "weights.bin").read_bytes()
    (home / "weights.bin").unlink()
    (home / "weights.bin").symlink_to(home / ".ssh" / "id_rsa")
    assert staged.read("weights.bin") is None and staged.read("m.onnx") is not None
    assert staged.read(".ssh/id_rsa") is None and staged.read("../home/notes.txt") is None


def test_external_data_outside_the_model_directory_is_refused(tmp_path):
    import onnx

    home = _home(tmp_path)
    m = onnx.load(str(home / "m.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../../etc/passwd"
    onnx.save(m, str(home / "evil.onnx"))
    with pytest.raises(FormatError, match="outside the model directory"):
        view.stage(view.prepare(home / "evil.onnx", tmp_path), tmp_path / "served")


def test_a_directory_whose_weights_file_links_outside_is_refused(tmp_path):
    home = _home(tmp_path)
    hf = home / "downloaded"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    (hf / "model.safetensors").symlink_to(home / ".ssh" / "id_rsa")
    with pytest.raises(FormatError, match="outside the model directory"):
        view.stage(view.prepare(hf, tmp_path), tmp_path / "served")
    with pytest.raises(FormatError, match="outside the model directory"):     # staging checks on its own too
        view.stage(view.Shown(hf / "model.safetensors", hf, "hf"), tmp_path / "served")


def _start(model: Path, tmpdir: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "view", str(model), "--no-browser"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, (line, proc.poll())
    return proc, int(line.split("http://127.0.0.1:", 1)[1].split()[0])


def test_view_of_a_model_in_home_serves_no_secret_and_a_killed_view_is_cleaned_up(tmp_path):
    home, tmpdir = _home(tmp_path), tmp_path / "tmp"
    tmpdir.mkdir()
    proc, port = _start(home / "m.onnx", tmpdir)
    try:
        assert _get(port, "/data/m.onnx", f"localhost:{port}")[0] == 200
        assert _get(port, "/data/.ssh/id_rsa", f"localhost:{port}")[0] == 404
        assert _get(port, "/data/m.onnx", f"rebound.example:{port}")[0] == 403
        (left,) = tmpdir.iterdir()
        assert left.name.startswith(f"modelport-view-{proc.pid}-")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=15)
    assert left.is_dir()                            # SIGKILL: nothing could clean up
    alive = tmpdir / f"modelport-view-{os.getpid()}-alive"     # a running view's directory stays
    alive.mkdir()
    (tmpdir / "modelport-view-notes").mkdir()       # not one of ours by name: stays
    proc, port = _start(home / "m.onnx", tmpdir)
    try:
        assert not left.exists()
        assert alive.is_dir() and (tmpdir / "modelport-view-notes").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130 and "Traceback" not in err      # stopped by SIGTERM, as README says
    assert sorted(p.name for p in tmpdir.iterdir()) == [alive.name, "modelport-view-notes"]


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("192.0.2.7", True), ("127.0.0.1", False),
                                          ("localhost", False)])
def test_a_non_loopback_host_is_warned_about(tmp_path, monkeypatch, host, warned):
    """Without binding anything: the server is replaced by one that records where it would listen."""
    import threading

    class Recording:
        def __init__(self, staged, host, port, origin=None):
            self.address, self.url = (host, 8765), f"http://{host}:8765"

        def stop(self):
            pass

    monkeypatch.setattr(view, "Server", Recording)
    lines, stop = [], threading.Event()
    stop.set()
    view.view(_mlp_onnx(tmp_path / "m.onnx"), host=host, browser=False, echo=lines.append, stop=stop)
    warning = [line for line in lines if line.startswith("warning:")]
    assert bool(warning) == warned, lines
    if warned:
        assert host in warning[0] and "m.onnx" in warning[0] and "8765" in warning[0]


def test_allowed_hosts():
    assert view.allowed_hosts("127.0.0.1", 80) == {"localhost:80", "127.0.0.1:80", "[::1]:80"}
    assert view.allowed_hosts("0.0.0.0", 80) == {"localhost:80", "127.0.0.1:80", "[::1]:80"}
    assert "192.0.2.7:80" in view.allowed_hosts("192.0.2.7", 80)
    assert [view.is_loopback(h) for h in ("127.0.0.1", "127.3.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "10.0.0.1",
                                          "example.com")] == [True, True, True, True, True, False, False, False]
