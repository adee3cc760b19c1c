"""torchscript: sniffed apart from torch.save zips; pickles allow-listed before torch.jit.load."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from modelport import formats
from modelport.errors import UnsafeContentError
from modelport.formats.torchscript import quiet_jit


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.fc = torch.nn.Linear(5, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 5, generator=g))
            self.fc.bias.copy_(torch.randn(3, generator=g))
        self.register_buffer("scale", torch.tensor([2.0, 3.0, 4.0]))

    def forward(self, x):
        return self.fc(x) * self.scale


def scripted(path):
    with quiet_jit():
        torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


def test_archive_is_torchscript_and_torch_save_zip_is_pt(tmp_path):
    ts = scripted(tmp_path / "net.pt")
    torch.save(Net().state_dict(), tmp_path / "sd.pt")
    assert formats.detect(ts).id == "torchscript"
    assert formats.detect(tmp_path / "sd.pt").id == "pt"


def test_weights_by_original_names(tmp_path):
    ts = scripted(tmp_path / "net.pt")
    want = Net().state_dict()
    with formats.open(ts) as src:
        assert sorted(src.names()) == sorted(want)
        for name, t in want.items():
            assert torch.equal(src.read(name), t)
            assert src.info(name).shape == tuple(t.shape)


def _rewrite(path, member_suffix, data):
    out = path.with_name("evil.pt")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename.endswith(member_suffix) else zin.read(item.filename))
    return out


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_a_pickle_that_imports_code_is_refused_before_loading(tmp_path, member, monkeypatch):
    evil = _rewrite(scripted(tmp_path / "net.pt"), member, pickle.dumps(_Boom(), protocol=2))
    called = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: called.append(a))
    assert formats.detect(evil).id == "torchscript"
    with pytest.raises(UnsafeContentError, match="system"):
        formats.open(evil)
    assert called == []
