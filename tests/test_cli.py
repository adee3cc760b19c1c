import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from modelport.cli import cli


@pytest.mark.parametrize("command", [[], ["formats"], ["inspect"], ["convert"], ["diff"], ["view"], ["verify"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_and_formats_do_not_import_heavy_libraries():
    code = ("import sys; from modelport.cli import main\n"
            "try:\n    main(['formats'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'transformers', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_formats_lists_every_format_with_capabilities():
    result = CliRunner().invoke(cli, ["formats", "--json"])
    rows = {r["id"]: r for r in json.loads(result.output)}
    assert {"safetensors", "hf"} <= set(rows)
    assert rows["safetensors"]["read"] and rows["safetensors"]["write"]
    assert rows["hf"]["directory"]


@pytest.fixture
def two_files(tmp_path):
    g = torch.Generator().manual_seed(5)
    a = {"x.weight": torch.randn(4, 3, generator=g), "x.bias": torch.randn(4, generator=g)}
    b = dict(a, **{"x.bias": a["x.bias"] + 0.5})
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    return tmp_path


def test_convert_inspect_diff_through_the_real_command(cli, two_files):
    d = two_files
    r = cli("convert", d / "a.safetensors", d / "c.safetensors")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    r = cli("diff", d / "a.safetensors", d / "c.safetensors")
    assert r.returncode == 0 and "same" in r.stdout
    r = cli("diff", d / "a.safetensors", d / "b.safetensors")
    assert r.returncode == 1
    assert "x.bias: values differ, max abs diff 0.5" in r.stdout
    assert "Traceback" not in r.stderr
    r = cli("diff", d / "a.safetensors", d / "b.safetensors", "--atol", "0.6", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["same"] is True
    r = cli("inspect", d / "a.safetensors", "--json")
    summary = json.loads(r.stdout)
    assert summary["total_params"] == 16 and summary["format"] == "safetensors"


def test_user_errors_exit_2_with_one_line_and_no_traceback(cli, two_files):
    d = two_files
    cases = [
        (["convert", d / "a.safetensors", d / "b.safetensors"], "already exists"),
        (["convert", d / "missing.pt", d / "o.safetensors"], "no such file"),
        (["convert", d / "a.safetensors", d / "o.unknown"], "--to"),
        (["inspect", d], "no format recognises"),
        (["convert", d / "a.safetensors", d / "o.x", "--to", "nope"], "not a format"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (d / "o.safetensors").exists() and not (d / "o.unknown").exists()


def test_debug_shows_the_traceback(two_files):
    from tests.conftest import run_cli

    r = run_cli("--debug", "inspect", two_files / "missing.pt")     # a real process: the traceback reaches stderr
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_inspect_run_builds_and_runs_the_model(cli, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = cli("inspect", root / "examples" / "tiny-gpt2.pt", "--run", "--config", root / "examples" / "tiny-gpt2.config.json",
            "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["run"]
    assert run["output"] == [1, 8, 37] and run["finite"] and run["assumed"] == []
    assert run["parameters"] == 15768
    r = cli("inspect", root / "examples" / "tiny-gpt2.pt", "--run")
    assert "note: built with assumed values" in r.stdout and "n_head" in r.stdout
    r = cli("inspect", root / "fixtures" / "t7nn" / "u1net.net", "--run")
    assert r.returncode == 2 and "--input-shape" in r.stderr
    r = cli("inspect", root / "fixtures" / "t7nn" / "u1net.net", "--run", "--input-shape", "1,3,32,32", "--json")
    assert json.loads(r.stdout)["run"]["output"] == [1, 12, 12, 12]


def test_inspect_run_with_a_user_factory(cli, tmp_path):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def build(width=4):\n"
        "    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 2))\n")
    g = torch.Generator().manual_seed(1)
    save_file({"0.weight": torch.randn(5, 6, generator=g), "0.bias": torch.randn(5, generator=g),
               "2.weight": torch.randn(2, 5, generator=g), "2.bias": torch.randn(2, generator=g)}, tmp_path / "w.safetensors")
    (tmp_path / "cfg.json").write_text('{"width": 5}')
    r = cli("inspect", "w.safetensors", "--run", "--arch", "mynets:build", "--config", "cfg.json", "--input-shape", "3,6",
            "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run"]["output"] == [3, 2]
    r = cli("inspect", "w.safetensors", "--run", "--arch", "mynets:build", "--input-shape", "3,6", cwd=tmp_path)
    assert r.returncode == 2 and "'0.weight' has shape [5, 6]" in r.stderr
