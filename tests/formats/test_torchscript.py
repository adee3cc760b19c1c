"""torchscript: sniffed apart from torch.save zips; weights read without torch.jit.load (names as state_dict()
gives them); pickles allow-listed and code checked before an archive is run."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from modelport import formats
from modelport.errors import FormatError, UnsafeContentError
from modelport.formats import _tscode
from modelport.formats.torchscript import check_code, load_module, quiet_jit, script_operators


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
    with pytest.raises(UnsafeContentError, match="system"):
        load_module(evil, trust_torchscript=True)      # trusting the code does not trust other pickles
    assert called == []


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, bias=False)                 # a None parameter: not listed
        self.register_buffer("running", torch.arange(2.0), persistent=False)   # TorchScript keeps it

    def forward(self, x):
        return self.lin(x) + self.running


class Tree(torch.nn.Module):
    """Submodules, a ModuleList, a tied weight, a plain tensor attribute (not in state_dict())."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.inner = Inner()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        self.blocks[1].weight = self.blocks[0].weight
        self.plain = torch.randn(4, generator=g)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        y = self.inner(x)
        for b in self.blocks:
            y = b(y)
        return y + self.plain.sum()


def test_names_order_aliases_and_values_equal_torch_jit_load(tmp_path, monkeypatch):
    path = tmp_path / "tree.ts"
    with quiet_jit():
        torch.jit.save(torch.jit.script(Tree().eval()), str(path))
        want = torch.jit.load(str(path)).state_dict()             # a file this test wrote: safe to load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("reading called torch.jit.load"))
    with formats.open(path) as src:
        assert src.aliases() == {"blocks.1.weight": "blocks.0.weight"}
        assert [n for n in want if n not in src.aliases()] == src.names()
        assert "plain" not in want and "inner.running" in want
        for name, t in want.items():
            assert torch.equal(src.read(name), t), name
        assert src.model_summary() == "TorchScript module Tree"


def test_reading_runs_no_setstate(tmp_path):
    from tests.adversarial import ts_payloads

    target = tmp_path / "victim.bin"
    target.write_bytes(b"original bytes of a file the archive names")
    path = ts_payloads.write(tmp_path / "evil.ts", "overwrite", target)
    with formats.open(path) as src:
        assert src.names() == ["weight"]
        assert torch.equal(src.read("weight"), ts_payloads.expected_weights("overwrite")["weight"])
    assert target.read_bytes().startswith(b"original")
    tuple_state = ts_payloads.write(tmp_path / "tuple.ts", "overwrite-tuple", target)
    with pytest.raises(FormatError, match=r"restores itself with its own __setstate__"):
        formats.open(tuple_state)
    assert target.read_bytes().startswith(b"original")


def test_a_class_list_that_is_not_names_is_refused(tmp_path):
    path = scripted(tmp_path / "net.ts")
    with zipfile.ZipFile(path) as z:
        member = next(n for n in z.namelist() if n.endswith(".py") and b'"scale"' in z.read(n))
        text = z.read(member).decode()
    bad = _rewrite(path, member, text.replace('__buffers__ = ["scale", ]', "__buffers__ = [1, ]").encode())
    with pytest.raises(FormatError, match="not a list of names"):
        formats.open(bad)


def _scan(body: str) -> list[str]:
    text = f"class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  def forward(self: __torch__.M, x: Tensor) -> Tensor:\n{body}\n"
    return _tscode.scan({"__torch__": text}, script_operators())


@pytest.mark.parametrize("body,found", [
    ("    return torch.from_file('/etc/passwd', False, 4)", "torch.from_file"),
    ("    return ops.aten.from_file('/x', None, 4)", "ops.aten.from_file"),
    ("    return torch.ops.aten.save(x, '/x')", "ops.aten.save"),
    ("    _0 = open('/x')\n    return x", "open"),
    ("    return ops.mylib.run(x)", "ops.mylib.run"),
    ("    c = torch.classes.evil.Writer()\n    return x", "custom class"),
    ("    return __torch__.torch.classes.evil.Writer(x)", "custom class"),
    ("    return eval('x')", "eval"),
    ("    return (x).tofile('/x')", ".tofile()"),
    ("    return torch.set_(x, x)", "torch.set_"),
    ("    return __torch__.elsewhere.run(x)", "does not define"),
])
def test_code_check_finds(body, found):
    findings = _scan(body)
    assert findings and any(found in f for f in findings), findings


def test_code_check_passes_ordinary_code():
    body = ("    _0 = __torch__.M\n    y = torch.linear(x, torch.ones([2, 2]), None)\n"
            "    z = annotate(List[Tensor], [])\n    _1 = torch.append(z, ops.prim.NumToTensor(torch.size(y, 0)))\n"
            "    w = getattr(self, \"0\")\n    return (w).forward(torch.relu(y), )")
    assert _scan(body) == []


def test_code_check_finds_custom_classes_in_annotations():
    text = "class M(Module):\n  __parameters__ = []\n  packed : __torch__.torch.classes.quantized.LinearPackedParamsBase\n"
    assert any("custom class" in f for f in _tscode.scan({"__torch__": text}, script_operators()))


def test_code_check_finds_hooks_and_unreadable_code():
    text = "class M(Module):\n  def __setstate__(self: __torch__.M, state: Tuple[int]) -> NoneType:\n    return None\n"
    assert any("__setstate__" in f for f in _tscode.scan({"__torch__": text}, script_operators()))
    assert any("cannot be read" in f for f in _tscode.scan({"__torch__": "class (:"}, script_operators()))


def test_scripted_and_traced_modules_pass_the_check(tmp_path):
    path = scripted(tmp_path / "net.ts")
    check_code(path)
    traced = tmp_path / "traced.ts"
    with quiet_jit():
        torch.jit.save(torch.jit.trace(Tree().eval(), torch.ones(1, 3)), str(traced))
    check_code(traced)
