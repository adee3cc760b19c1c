"""--arch package.module:factory: the user's own module, built from their factory and loaded strictly."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

import modelport
from modelport.errors import LayoutError, ModelportError, UnsupportedError
from modelport.models.loader import example_inputs

USER_CODE = textwrap.dedent('''
    import torch
    from torch import nn

    def build(width=4, classes=3):
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, classes))

    def not_a_module():
        return {"weight": torch.zeros(1)}

    class Factories:
        @staticmethod
        def small():
            return build(width=2)
''')


@pytest.fixture(scope="module")
def user_pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    pkg = root / "mp_user_nets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "vision.py").write_text(USER_CODE)
    sys.path.insert(0, str(root))
    yield "mp_user_nets.vision"
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("mp_user_nets")]:
        del sys.modules[name]


def weights_of(module, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def reference(width=4, classes=3, seed=0):
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.eval()


def test_factory_with_config_file_loads_strictly_and_runs(user_pkg, tmp_path):
    net = reference(width=5, classes=7)
    path = weights_of(net, tmp_path / "w.safetensors")
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps({"width": 5, "classes": 7}))
    model = modelport.load_model(path, arch=f"{user_pkg}:build", config=cfg, input_shape="1,3,9,10")
    (x,) = example_inputs(model)
    assert x.shape == (1, 3, 9, 10) and x.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
        traced = torch.jit.trace(model, (x,))
        torch.testing.assert_close(traced(x), net(x), rtol=0, atol=0)


def test_factory_without_config_and_dotted_attribute(user_pkg, tmp_path):
    path = weights_of(reference(width=2), tmp_path / "w.safetensors")
    model = modelport.load_model(path, arch=f"{user_pkg}:Factories.small", input_shape=(2, 3, 6, 6), input_dtype="float64",
                                 dtype="float64")
    (x,) = example_inputs(model)
    assert x.dtype == torch.float64 and model(x).shape == (2, 3)


def test_missing_and_unexpected_weights_are_listed(user_pkg, tmp_path):
    state = reference().state_dict()
    state["head.extra"] = torch.zeros(2)
    del state["4.bias"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(LayoutError, match=r"missing 1: 4.bias; unexpected 1: head.extra"):
        modelport.load_model(tmp_path / "w.safetensors", arch=f"{user_pkg}:build")


def test_wrong_shape_is_named(user_pkg, tmp_path):
    path = weights_of(reference(width=6), tmp_path / "w.safetensors")
    with pytest.raises(LayoutError, match=r"'0.weight' has shape \[6, 3, 3, 3\], .* needs \[4, 3, 3, 3\]"):
        modelport.load_model(path, arch=f"{user_pkg}:build")


@pytest.mark.parametrize("spec, config, text", [
    ("mp_no_such_pkg.net:build", None, "cannot import module 'mp_no_such_pkg.net'"),
    ("{pkg}:nothing_here", None, "has no attribute 'nothing_here'"),
    ("{pkg}:not_a_module", None, "returned dict, not a torch.nn.Module"),
    ("{pkg}:build", {"depth": 3}, "does not accept the config given"),
    ("{pkg}:", None, "package.module:factory"),
])
def test_bad_factories_fail_clearly(user_pkg, tmp_path, spec, config, text):
    path = weights_of(reference(), tmp_path / "w.safetensors")
    with pytest.raises(ModelportError, match=text):
        modelport.load_model(path, arch=spec.format(pkg=user_pkg), config=config)


def test_input_shape_is_checked(user_pkg, tmp_path):
    path = weights_of(reference(), tmp_path / "w.safetensors")
    with pytest.raises(UnsupportedError, match="positive integers"):
        modelport.load_model(path, arch=f"{user_pkg}:build", input_shape="1,three")
    model = modelport.load_model(path, arch=f"{user_pkg}:build")
    with pytest.raises(UnsupportedError, match="--input-shape"):
        example_inputs(model)


def test_errors_are_specific_and_sys_path_is_restored(tmp_path, monkeypatch):
    """A user module is imported with the working directory on sys.path, and only for the import."""
    import sys

    (tmp_path / "mp_cwd_nets.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(3, 2)\n"
                                             "def not_a_module():\n    return {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    from modelport.models.user import build_user_module

    assert isinstance(build_user_module("mp_cwd_nets:build"), torch.nn.Module)
    assert sys.path == before
    with pytest.raises(UnsupportedError, match="not a torch.nn.Module"):
        build_user_module("mp_cwd_nets:not_a_module")
    with pytest.raises(UnsupportedError, match="cannot import module"):
        build_user_module("mp_cwd_missing:build")
    with pytest.raises(LayoutError, match="does not accept the config"):
        build_user_module("mp_cwd_nets:build", {"width": 3})
    assert sys.path == before
    sys.modules.pop("mp_cwd_nets", None)


def test_input_shapes_one_or_one_per_input():
    from modelport.models.user import parse_input_shape, parse_input_shapes

    assert parse_input_shapes("1,3,8,8") == [(1, 3, 8, 8)]
    assert parse_input_shapes("1x3x8x8") == [(1, 3, 8, 8)]
    assert parse_input_shapes((2, 5)) == [(2, 5)]
    assert parse_input_shapes(["2,1", "2x2"]) == [(2, 1), (2, 2)]
    assert parse_input_shapes([(2, 1), (2, 2)]) == [(2, 1), (2, 2)]
    with pytest.raises(UnsupportedError, match="given 2 times, and this model takes one input"):
        parse_input_shape(("2,1", "2,2"))          # a model of one input given two shapes
    with pytest.raises(UnsupportedError, match="positive integers"):
        parse_input_shapes(["2,1", "2,0"])
