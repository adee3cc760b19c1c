"""Parity's inputs: the reference's tokenizer is read without running its directory's code."""

from __future__ import annotations

import builtins
import importlib.util

import pytest

from modelport.errors import FormatError, UnsafeContentError
from modelport.models import hf_auto
from modelport.parity import inputs

from ..adversarial.test_custom_code import planted

# a mark, not importorskip: importing transformers while collecting would grow the test process, whose
# size the measured CLI runs of tests/adversarial inherit
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")


def test_load_tokenizer_refuses_auto_map_and_never_prompts_even_without_the_check(tmp_path, monkeypatch):
    """The check refuses first; behind it, transformers itself is told trust_remote_code=False, so with the
    check out of the way it refuses (one FormatError) instead of reading stdin."""
    model, prompts, marker = planted(tmp_path, "tokenizer_config.json")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UnsafeContentError, match="tokenizer_config.json.*auto_map"):
        inputs.load_tokenizer(model, prompts)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("stdin was read"))
    monkeypatch.setattr(hf_auto, "refuse_custom_code", lambda *a: None)
    with pytest.raises(FormatError, match="custom code"):
        inputs.load_tokenizer(model, prompts)
    assert not marker.exists()


def test_a_plain_tokenizer_still_loads(tmp_path):
    model, prompts, _ = planted(tmp_path, "tokenizer_config.json")
    (model / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    tok = inputs.load_tokenizer(model, prompts)
    assert tok("the cat")["input_ids"] == [2, 5, 7, 3]
