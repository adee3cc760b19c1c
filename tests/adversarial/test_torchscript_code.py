"""TorchScript archives whose code attacks the machine (issue 16, item 2): reading one (inspect, diff,
convert of its weights) never runs its code; running one (parity, inspect --run, export) is refused
before torch.jit.load unless --trust-torchscript."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from . import ts_payloads  # noqa: E402
from .hostile import run_measured  # noqa: E402

ORIGINAL = b"original bytes of a file the archive names, 0123456789"


@pytest.fixture
def victim(tmp_path):
    target = tmp_path / "victim.bin"
    target.write_bytes(ORIGINAL)
    return target


def _one_line(r, rc: int = 2):
    assert r["rc"] == rc, r
    assert "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1, r["stderr"]


@pytest.mark.parametrize("kind", ["overwrite", "exfiltrate", "spin"])
def test_reading_runs_nothing(tmp_path, victim, kind):
    from safetensors.torch import load_file

    evil = ts_payloads.write(tmp_path / "evil.ts", kind, victim)
    r = run_measured(["inspect", evil], timeout=60)
    assert r["rc"] == 0 and "weight" in r["stdout"], r
    r = run_measured(["diff", evil, evil], timeout=60)
    assert r["rc"] == 0, r
    out = tmp_path / "out.safetensors"
    r = run_measured(["convert", evil, out, "--no-manifest"], timeout=60)
    assert r["rc"] == 0, r
    assert victim.read_bytes() == ORIGINAL
    got = load_file(str(out))
    assert set(got) == {"weight"} and torch.equal(got["weight"], ts_payloads.expected_weights(kind)["weight"])
    assert ORIGINAL[:16] not in out.read_bytes()


def test_a_module_that_keeps_its_state_only_for_its_setstate_is_refused_on_read(tmp_path, victim):
    evil = ts_payloads.write(tmp_path / "evil.ts", "overwrite-tuple", victim)
    r = run_measured(["inspect", evil], timeout=60)
    _one_line(r)
    assert str(evil) in r["stderr"] and "__setstate__" in r["stderr"]
    assert victim.read_bytes() == ORIGINAL


@pytest.mark.parametrize("args", [["parity", "{evil}", "{evil}"], ["inspect", "--run", "{evil}"],
                                  ["convert", "{evil}", "{out}"]])
def test_running_is_refused_without_the_flag(tmp_path, victim, args):
    evil = ts_payloads.write(tmp_path / "evil.ts", "overwrite-nested", victim)
    out = tmp_path / "out.onnx"
    r = run_measured([a.format(evil=evil, out=out) for a in args] + ["--input-shape", "1,4"], timeout=60)
    _one_line(r)
    assert r["stderr"].startswith(f"modelport: error: {evil}: ") and "--trust-torchscript" in r["stderr"], r["stderr"]
    assert "torch.from_file" in r["stderr"] and "__setstate__" in r["stderr"]
    assert victim.read_bytes() == ORIGINAL and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ts", "victim.bin"]


def test_the_flag_runs_it(tmp_path, victim):
    evil = ts_payloads.write(tmp_path / "evil.ts", "overwrite", victim)
    r = run_measured(["parity", evil, evil, "--input-shape", "1,4", "--trust-torchscript"], timeout=60)
    assert r["rc"] == 0, r
    assert victim.read_bytes().startswith(b"AAAAAAAA")     # what the flag allows: the file's code ran
