"""What modelport writes and prints, seen from the outside: output into a closed pipe (`| head`) ends
quietly with 141, and every file written follows the umask (ONNX external data used to be 0600)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from ..conftest import ROOT
from .hostile import write_safetensors


def _closed_stdout(*args) -> subprocess.CompletedProcess:
    """``python -m modelport ARGS`` whose stdout reader is gone before it writes a byte."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    import json
    import struct

    n = 2000                              # more lines than a pipe holds: inspect writes while running
    header = {f"layer.{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    f = write_safetensors(tmp_path / "m.safetensors", json.dumps(header), struct.pack(f"<{n}f", *range(n)))
    for args in (("inspect", f, "--all"), ("formats",), ("inspect", "--help")):
        r = _closed_stdout(*args)
        assert r.returncode == 141 and r.stderr == "", (args, r.returncode, r.stderr)


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback(monkeypatch):
    from modelport import cli, formats

    def broken():
        raise BrokenPipeError(32, "a pipe to some other process")

    monkeypatch.setattr(formats, "all_formats", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["formats"])


UMASK_SCRIPT = """
import os, sys
from pathlib import Path
from modelport.convert import convert
from modelport.convert.export import export_onnx
from tests.models import tiny

out = Path(sys.argv[1])
tiny.gpt2(seed=6).save_pretrained(out / "src")
os.umask(0o002)                      # group-writable: neither 0644 nor 0600
export_onnx(out / "src", out / "onnx" / "m.onnx", external_data=True)
convert(out / "src", out / "m.pt")
convert(out / "src", out / "m.safetensors")
convert(out / "src", out / "hf", to="hf")
"""


def test_every_written_file_follows_the_umask(tmp_path):
    """In a child process (torch stays out of this one, whose size the measured CLI runs inherit)."""
    pytest.importorskip("onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", UMASK_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)       # noqa: E731
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.relative_to(tmp_path).parts]
    names = {str(p.relative_to(tmp_path)) for p in files}
    assert {"onnx/m.onnx", "onnx/m.onnx.data", "m.pt", "m.safetensors", "hf/.modelport.json"} <= names, names
    assert {n: oct(mode(tmp_path / n)) for n in names} == {n: oct(0o664) for n in names}
    assert oct(mode(tmp_path / "hf")) == oct(0o775)
