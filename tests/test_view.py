"""modelport view without a browser: what is served, the graph-only copy, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from modelport import view
from modelport.errors import MissingDependencyError, UnsupportedError

from .conftest import ROOT


def _mlp_onnx(path: Path, external: bool = False) -> Path:
    """A two-layer MLP exported at opset 17; with ``external`` its weights go to ``weights.bin``."""
    import torch

    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 37)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 24, generator=g),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    if external:
        import onnx

        m = onnx.load(str(path))
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                  size_threshold=0)
    return path


def test_graph_only_copy_keeps_shapes_and_drops_data(tmp_path):
    import onnx

    src = _mlp_onnx(tmp_path / "m.onnx", external=True)
    dst = tmp_path / "g.onnx"
    n = view.graph_only_copy(src, dst)
    full = onnx.load(str(src))
    graph = onnx.load(str(dst), load_external_data=False)
    assert n == len(full.graph.initializer) == 4
    for a, b in zip(full.graph.initializer, graph.graph.initializer):
        assert (a.name, list(a.dims), a.data_type) == (b.name, list(b.dims), b.data_type)
        assert not b.raw_data and not b.external_data and b.data_location == onnx.TensorProto.DEFAULT
    assert [x.op_type for x in graph.graph.node] == [x.op_type for x in full.graph.node]
    assert dst.stat().st_size < 2000 < (tmp_path / "weights.bin").stat().st_size


def test_big_onnx_is_shown_graph_only_with_a_note(tmp_path):
    src = _mlp_onnx(tmp_path / "m.onnx", external=True)
    work = tmp_path / "work"
    work.mkdir()
    shown = view.prepare(src, work, graph_only_above=1000)
    assert shown.kind == "onnx-graph-only" and shown.file.parent == work
    assert any("graph only" in n for n in shown.notes) and any("GB of weights" in n for n in shown.notes)
    small = view.prepare(src, work)
    assert small.kind == "onnx" and small.file == src


def test_directories_show_their_weights_file(tmp_path):
    from safetensors.torch import save_file

    import torch

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    save_file({"w": torch.zeros(2)}, hf / "model.safetensors")
    shown = view.prepare(hf, tmp_path)
    assert shown.file == hf / "model.safetensors" and shown.kind == "hf"


def _meta_dir(tmp_path, shards: int):
    from modelport import formats
    from modelport.formats.base import WriteOptions
    from modelport.formats.memory import StateDictSource
    from modelport.models.families import format_layout
    from modelport.models.layouts import to_layout

    from .formats.test_base import CONFIG, llama_hub

    src = to_layout(StateDictSource(llama_hub(), config=CONFIG), "llama-meta", CONFIG)
    params = format_layout("meta").config.to_native(CONFIG, {}, "test")
    formats.get("meta").write(src, tmp_path / "meta", WriteOptions(config=params, shards=shards))
    return tmp_path / "meta"


def test_a_meta_directory_shows_and_serves_its_first_shard(tmp_path):
    meta = _meta_dir(tmp_path, shards=2)
    shown = view.prepare(meta, tmp_path)
    assert shown.file == meta / "consolidated.00.pth" and shown.kind == "meta" and shown.served == []
    assert sorted(view.stage(shown, tmp_path / "served").pins) == ["consolidated.00.pth"]


def test_a_directory_is_shown_as_its_source_lists_its_files(tmp_path, monkeypatch):
    """view asks the source (files()) rather than knowing a format's file names: an index the source lists
    is shown, with the weight files it lists served beside it."""
    from modelport.formats.base import SourceFile
    from modelport.formats.meta import MetaSource

    meta = _meta_dir(tmp_path, shards=2)
    (meta / "weights.index.json").write_text("{}")
    listed = MetaSource.files
    monkeypatch.setattr(MetaSource, "files", lambda self: listed(self) + [SourceFile(meta / "weights.index.json", "index")])
    shown = view.prepare(meta, tmp_path)
    assert shown.file == meta / "weights.index.json"
    assert sorted(view.stage(shown, tmp_path / "served").pins) == ["consolidated.00.pth", "consolidated.01.pth",
                                                                  "weights.index.json"]


def test_graph_only_needs_a_graph(tmp_path):
    from safetensors.torch import save_file

    import torch

    f = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, f)
    with pytest.raises(UnsupportedError, match="--as-onnx"):
        view.prepare(f, tmp_path, graph_only=True)


def test_as_onnx_says_when_the_exporter_is_missing(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import torch

    f = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, f)
    monkeypatch.setitem(sys.modules, "modelport.convert.export", None)   # as in a version without it
    with pytest.raises(MissingDependencyError, match="not available in this version"):
        view.prepare(f, tmp_path, as_onnx=True)


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "view", *args, "--no-browser"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()   # bounded: the process prints the URL or exits
    assert "http://127.0.0.1:" in line, (line, proc.poll())
    return proc, line.split("http://", 1)[1].split()[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serves_onnx_with_external_data_and_stops_cleanly(tmp_path, sig):
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    src = _mlp_onnx(tmp_path / "m.onnx", external=True)
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("modelport-view-*"))
    proc, host = _start(str(src))
    try:
        page = urllib.request.urlopen(f"http://{host}/", timeout=10).read().decode()
        assert '<meta name="file" content="/data/m.onnx">' in page
        assert urllib.request.urlopen(f"http://{host}/data/m.onnx", timeout=10).read() == src.read_bytes()
        weights = urllib.request.urlopen(f"http://{host}/data/weights.bin", timeout=10).read()
        assert weights == (tmp_path / "weights.bin").read_bytes()
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err      # interrupted, as README says of every command
    assert "stopped" in out and "Traceback" not in err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}/", timeout=2)
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("modelport-view-*")) <= before


def test_graph_only_copy_is_removed_on_exit(tmp_path):
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    src = _mlp_onnx(tmp_path / "m.onnx", external=True)
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(env_tmp),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "view", str(src), "--graph-only", "--no-browser"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        host = line.split("http://", 1)[1].split()[0]
        assert len(list(env_tmp.glob("modelport-view-*/m.graph.onnx"))) == 1
        served = urllib.request.urlopen(f"http://{host}/data/m.graph.onnx", timeout=10).read()
        assert len(served) < 2000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert not list(env_tmp.iterdir())


def test_a_busy_port_is_a_clear_error(tmp_path):
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    import socket

    src = _mlp_onnx(tmp_path / "m.onnx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "-m", "modelport", "view", str(src), "--port", str(port), "--no-browser"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


def test_missing_netron_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "netron", None)
    with pytest.raises(MissingDependencyError, match=r"modelport\[view\]"):
        view.Server(tmp_path / "x.onnx")


def test_view_stops_when_asked(tmp_path):
    """The in-process API: serve, report the URL, stop on an event, remove its temporary folder."""
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    import threading

    src = _mlp_onnx(tmp_path / "m.onnx")
    stop, urls, lines = threading.Event(), [], []
    t = threading.Thread(target=view.view, args=(src,), kwargs=dict(browser=False, graph_only=True, echo=lines.append,
                                                                    ready=urls.append, stop=stop))
    t.start()
    end = time.monotonic() + 30
    while not urls and time.monotonic() < end:
        time.sleep(0.05)
    assert urllib.request.urlopen(urls[0] + "/data/m.graph.onnx", timeout=10).read()
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive() and lines[-1] == "stopped"


def test_convert_view_serves_the_result(tmp_path):
    """`convert … --view` writes the output, then serves it until stopped (BROWSER=true: no browser opens)."""
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    from .conftest import tied_state_dict

    import torch

    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    env = {**os.environ, "BROWSER": "true",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "convert", str(src), str(tmp_path / "m.safetensors"),
                             "--view"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("wrote ") and lines[1].startswith("manifest: ")
        host = lines[2].split("http://", 1)[1].split()[0]
        served = urllib.request.urlopen(f"http://{host}/data/m.safetensors", timeout=10).read()
        assert served == (tmp_path / "m.safetensors").read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 130       # the conversion was kept (written before serving); the viewer was stopped


def test_a_second_signal_does_not_cut_the_clean_up_short(tmp_path):
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    src = _mlp_onnx(tmp_path / "m.onnx")
    proc, _ = _start(str(src), "--graph-only")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130 and "stopped" in out and "interrupted" not in err, (out, err)


def test_as_onnx_shows_the_exported_graph(tmp_path, monkeypatch):
    """The exporter's seam: export_onnx(src, dst, opset=…) writes the graph that is then shown."""
    import types

    from safetensors.torch import save_file

    import torch

    f = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, f)
    calls = []

    def export_onnx(src, dst, *, opset, arch=None, config=None):
        calls.append((Path(src), opset, arch, config))
        _mlp_onnx(Path(dst))

    monkeypatch.setitem(sys.modules, "modelport.convert.export", types.SimpleNamespace(export_onnx=export_onnx))
    work = tmp_path / "work"
    work.mkdir()
    shown = view.prepare(f, work, as_onnx=True, graph_only_above=10, config=tmp_path / "config.json")
    assert calls == [(f, 17, None, tmp_path / "config.json")] and shown.kind == "onnx-graph-only" and shown.file.parent == work
    assert any("exported to ONNX" in n for n in shown.notes)


def test_view_takes_a_config_for_as_onnx_and_refuses_it_without(tmp_path, cli):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    r = cli("view", f, "--config", tmp_path / "config.json", "--no-browser")
    assert r.returncode == 2 and "--as-onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
def test_a_sharded_directory_stages_its_index_and_shards_only(tmp_path):
    import json

    from safetensors.torch import save_file

    import torch

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    (hf / "secret.txt").write_text("no")
    save_file({"a": torch.zeros(2)}, hf / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, hf / "model-00002-of-00002.safetensors")
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    staged = view.stage(view.prepare(hf, tmp_path), tmp_path / "served")
    assert staged.main == "model.safetensors.index.json"
    assert sorted(staged.pins) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                   "model.safetensors.index.json"]
    assert staged.read("model-00002-of-00002.safetensors") == (hf / "model-00002-of-00002.safetensors").read_bytes()
    assert staged.read("secret.txt") is None and staged.read("config.json") is None
