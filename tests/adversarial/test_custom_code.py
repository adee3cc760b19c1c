"""A model directory whose configs name custom code (``auto_map``) runs nothing and asks nothing: parity
--prompts used to reach transformers' "Do you wish to run the custom code? [y/N]" prompt, and ``y`` ran it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT
from ..parity import faults

pytest.importorskip("transformers")


def _planted(tmp_path: Path, where: str) -> tuple[Path, Path, Path]:
    """A tiny llama directory with a BERT tokenizer whose ``auto_map`` (in ``where``) names
    ``tokenization_evil.EvilTokenizer``; importing that module leaves a marker file."""
    import transformers

    state, config = faults.llama_state(seed=41)
    model = faults.write_dir(tmp_path / "model", state, config)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(str(model))
    marker = tmp_path / "ran"
    (model / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('custom code ran')\n"
        "from transformers import BertTokenizer as EvilTokenizer\n")
    f = model / where
    data = json.loads(f.read_text())
    data["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    if where == "tokenizer_config.json":
        data["tokenizer_class"] = "EvilTokenizer"     # no built-in class to fall back on: transformers would ask
    f.write_text(json.dumps(data))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\n")
    return model, prompts, marker


@pytest.mark.parametrize("where, engine", [("tokenizer_config.json", "reference"), ("config.json", "transformers")])
def test_parity_prompts_refuse_custom_tokenizer_code_without_asking(tmp_path, where, engine):
    model, prompts, marker = _planted(tmp_path, where)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "modelport", "parity", str(model), str(model), "--prompts", str(prompts),
                        "--new-tokens", "0", "--engine", engine],
                       input="y\ny\ny\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert where in r.stderr and "auto_map" in r.stderr and "custom code" in r.stderr
    assert "[y/N]" not in r.stdout + r.stderr
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()        # nothing copied into transformers' module cache either


def test_load_tokenizer_never_prompts_even_without_the_check(tmp_path, monkeypatch):
    """The second line of defence: transformers itself is told trust_remote_code=False, so with the
    auto_map check out of the way it refuses (one FormatError) instead of reading stdin."""
    import builtins

    from modelport.errors import FormatError, UnsafeContentError
    from modelport.models import hf_auto
    from modelport.parity import inputs

    model, prompts, marker = _planted(tmp_path, "tokenizer_config.json")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UnsafeContentError, match="auto_map"):
        inputs.load_tokenizer(model, prompts)

    def no_input(*a):
        raise AssertionError("stdin was read")

    monkeypatch.setattr(builtins, "input", no_input)
    monkeypatch.setattr(hf_auto, "refuse_custom_code", lambda *a: None)
    with pytest.raises(FormatError, match="custom code"):
        inputs.load_tokenizer(model, prompts)
    assert not marker.exists()


def test_the_transformers_engine_never_runs_model_code_even_without_the_check(tmp_path, monkeypatch):
    import builtins

    from modelport.errors import FormatError, UnsafeContentError
    from modelport.models import hf_auto

    state, config = faults.llama_state(seed=42)
    model = faults.write_dir(tmp_path / "model", state, config)
    marker = tmp_path / "ran"
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
