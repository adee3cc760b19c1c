"""Malicious pickles in every container (zip, legacy, HF pytorch_model.bin, Meta consolidated.00.pth)
and every protocol: none runs, none leaves its marker, each is one clean error (exit 2)."""

from __future__ import annotations

import json
import os

import pytest

from modelport import formats
from modelport.errors import FormatError, ModelportError, UnsafeContentError

from .hostile import payloads, run_measured, write_pt_legacy, write_pt_zip


def _containers(tmp_path, name: str, pkl: bytes):
    """The same pickle inside each container modelport reads it from; (label, path)."""
    zip_path = write_pt_zip(tmp_path / f"{name}.pt", pkl)
    legacy = write_pt_legacy(tmp_path / f"{name}-legacy.pt", pkl)
    hf = tmp_path / f"{name}-hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    write_pt_zip(hf / "pytorch_model.bin", pkl)
    meta = tmp_path / f"{name}-meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 2}))
    write_pt_legacy(meta / "consolidated.00.pth", pkl)
    return [("zip", zip_path, "pt"), ("legacy", legacy, "pt"), ("hf", hf, "hf"), ("meta", meta, "meta")]


def test_no_payload_runs_in_any_container_or_protocol(tmp_path):
    marker = tmp_path / "MARKER"
    cases = refused = 0
    for name, pkl in payloads(marker).items():
        for label, path, fmt in _containers(tmp_path, name.replace("/", "_"), pkl):
            cases += 1
            with pytest.raises(ModelportError) as err:
                with formats.open(path, fmt):
                    pass
            assert isinstance(err.value, (UnsafeContentError, FormatError)), (name, label, err.value)
            assert not marker.exists(), f"{name} in {label} ran code"
            refused += 1
    assert cases == refused >= 4 * 30


def test_code_payload_from_the_command_line_is_one_line_exit_2(tmp_path):
    marker = tmp_path / "MARKER"
    pkl = payloads(marker)["os.system-p2"]
    src = write_pt_zip(tmp_path / "evil.pt", pkl)
    r = run_measured(["convert", src, tmp_path / "out.safetensors"], timeout=10)
    assert r["rc"] == 2 and "refusing to import" in r["stderr"] and "Traceback" not in r["stderr"]
    assert len(r["stderr"].strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if ".modelport-" in p]
