"""A disk that fills up mid-write: one line, exit 2, nothing left on the disk. A real small tmpfs
where this machine lets us mount one (root), and ENOSPC injected into the writes everywhere."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from modelport.convert import convert
from modelport.errors import OutputError

from .hostile import run_measured, write_safetensors

TARGETS = [("model.pt", None), ("model.safetensors", None), ("model.t7", None), ("hf-out", "hf")]


@pytest.fixture
def source(tmp_path):
    header, off = {}, 0
    for i in range(16):
        header[f"w{i}"] = {"dtype": "F32", "shape": [256, 256], "data_offsets": [off, off + 256 * 256 * 4]}
        off += 256 * 256 * 4
    src = write_safetensors(tmp_path / "src.safetensors", header, os.urandom(off))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    return src


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); ENOSPC is injected by test_enospc_injected instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("name,to", TARGETS)
def test_a_full_tmpfs(source, small_disk, name, to):
    args = ["convert", source, small_disk / name] + (["--to", to, "--config", source.parent / "config.json"] if to else [])
    r = run_measured(args, timeout=20)
    assert r["rc"] == 2, r["stderr"]
    assert "disk is full" in r["stderr"] and "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1
    assert os.listdir(small_disk) == []


@pytest.mark.parametrize("name,to", TARGETS)
@pytest.mark.parametrize("call", ["write", "copy_file_range", "pwrite"])
def test_enospc_injected(tmp_path, source, monkeypatch, name, to, call):
    real = getattr(os, call)
    budget = [3]

    def failing(*args, **kwargs):
        budget[0] -= 1
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, failing)
    out = tmp_path / "out"
    out.mkdir()
    try:
        convert(source, out / name, to=to, options=None if not to else __import__("modelport.formats.base", fromlist=["Options"]).Options(config=source.parent / "config.json"))
    except OutputError as exc:
        assert "disk is full" in str(exc)
    monkeypatch.undo()
    leftovers = [n for n in os.listdir(out) if ".modelport-" in n]
    assert leftovers == []


@pytest.fixture
def gpt2_dir(tmp_path):
    """A Hugging Face GPT-2 directory whose TorchScript export (about 3 MB) cannot fit a 1 MB disk."""
    from ..models import tiny

    tiny.gpt2(seed=41, n_embd=128, n_inner=160, n_layer=3).save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_torchscript_export_to_a_full_tmpfs(gpt2_dir, small_disk):
    r = run_measured(["convert", gpt2_dir, small_disk / "m.ts", "--to", "torchscript"], timeout=120)
    assert r["rc"] == 2, r["stderr"]          # torch's own writer aborted here (exit 134) and left its file
    assert "disk is full" in r["stderr"] and "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1
    assert os.listdir(small_disk) == []


def test_torchscript_writer_survives_a_full_device(tmp_path):
    """torch.jit.save's own writer aborts the process on ENOSPC; modelport's raises OSError and this process lives."""
    import torch

    from modelport.formats.torchscript import quiet_jit, save_module

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with quiet_jit():
        module = torch.jit.script(torch.nn.Linear(256, 256))
    with pytest.raises(OSError) as err:
        save_module(module, "/dev/full", {"modelport.json": "{}"})
    assert err.value.errno == errno.ENOSPC


def test_torchscript_written_through_memory_when_the_disk_is_short(tmp_path, monkeypatch):
    import torch

    from modelport.formats.torchscript import quiet_jit, save_module

    with quiet_jit():
        module = torch.jit.script(torch.nn.Linear(16, 8))
    saves = []
    real_save = torch.jit.save
    monkeypatch.setattr(torch.jit, "save", lambda m, f, **kw: saves.append(type(f).__name__) or real_save(m, f, **kw))
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 10, 1, 1, 10, 1, 1, 0, 255)))
    save_module(module, tmp_path / "m.ts", {"modelport.json": "{}"})
    assert saves == ["_FdWriter"]                     # not torch's own file writer
    monkeypatch.undo()
    with quiet_jit():
        assert torch.equal(torch.jit.load(str(tmp_path / "m.ts")).weight, module.weight)


def test_torchscript_export_with_a_full_device(gpt2_dir, tmp_path, monkeypatch):
    from modelport.convert.export import export
    from modelport.formats import torchscript

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    real = torchscript.save_module
    monkeypatch.setattr(torchscript, "save_module", lambda module, path, *a: real(module, "/dev/full", *a))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="the disk is full"):
        export(gpt2_dir, out / "m.ts", "torchscript")
    assert os.listdir(out) == []
