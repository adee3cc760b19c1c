"""The transformers engine: a directory naming custom code is refused, and transformers never runs it."""

from __future__ import annotations

import builtins
import importlib.util
import json

import pytest

from modelport.errors import FormatError, UnsafeContentError
from modelport.models import hf_auto

from ..adversarial.test_custom_code import planted
from ..conftest import ROOT

# a mark, not importorskip: importing transformers while collecting would grow the test process, whose
# size the measured CLI runs of tests/adversarial inherit
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")


def test_custom_model_code_is_refused_and_never_runs_even_without_the_check(tmp_path, monkeypatch):
    model, _, marker = planted(tmp_path, "tokenizer_config.json")
    (model / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    for module in ("configuration_evil", "modeling_evil"):
        (model / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('custom code ran')\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="evil", architectures=["EvilForCausalLM"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"})
    (model / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UnsafeContentError, match="config.json.*auto_map"):
        hf_auto.transformers_runnable(model)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("stdin was read"))
    monkeypatch.setattr(hf_auto, "refuse_custom_code", lambda *a: None)
    with pytest.raises(FormatError, match="custom code"):
        hf_auto.transformers_runnable(model)
    assert not marker.exists()


@pytest.mark.parametrize("value", [{}, [], None, "x"])
def test_any_auto_map_is_refused(tmp_path, value):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": value}))
    with pytest.raises(UnsafeContentError, match="auto_map"):
        hf_auto.refuse_custom_code(tmp_path, "the model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    hf_auto.refuse_custom_code(tmp_path, "the model")


def test_every_transformers_loading_call_refuses_remote_code():
    """Each ``from_pretrained`` / ``from_config`` / ``for_model`` call in the package says
    ``trust_remote_code=False`` itself (not through a dict that may lose it)."""
    import ast

    calls = []
    for f in sorted((ROOT / "modelport").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("from_pretrained", "from_config", "for_model"):
                kw = {k.arg: k.value for k in node.keywords if k.arg}
                flag = kw.get("trust_remote_code")
                calls.append((f"{f.relative_to(ROOT)}:{node.lineno}",
                              isinstance(flag, ast.Constant) and flag.value is False))
    assert len(calls) >= 2 and all(ok for _, ok in calls), calls
