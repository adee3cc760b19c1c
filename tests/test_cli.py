import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from modelport.cli import cli


@pytest.mark.parametrize("command", [[], ["formats"], ["inspect"], ["convert"], ["diff"], ["parity"], ["view"],
                                     ["verify"], ["batch"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_arch_help_lists_the_registered_families():
    import click

    from modelport.cli import ArchOption
    from modelport.models import known_archs

    options = [(name, p) for name, cmd in cli.commands.items() for p in cmd.params if p.name == "arch"]
    assert {name for name, _ in options} >= {"inspect", "convert", "view", "verify", "parity"}
    for name, option in options:
        assert isinstance(option, ArchOption), name
        text = option.get_help_record(click.Context(cli.commands[name], info_name=name))[1]
        assert "{archs}" not in text and all(a in text for a in known_archs()), (name, text)


def test_help_and_formats_do_not_import_heavy_libraries():
    code = ("import sys; from modelport.cli import main\n"
            "try:\n    main(['formats'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'transformers', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_importing_the_cli_loads_no_heavy_library_and_no_conversion_machinery():
    code = ("import sys, modelport.cli\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'transformers') "
            "or m.startswith(('modelport.convert', 'modelport.parity', 'modelport.formats', 'modelport.models'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_facade_names_resolve_on_use_and_stay_the_functions():
    code = ("import sys, modelport\n"
            "assert 'modelport.convert' not in sys.modules\n"
            "import modelport.convert, modelport.diff, modelport.inspect, modelport.parity\n"
            "from modelport.convert import convert\n"
            "from modelport.parity import parity\n"
            "assert modelport.convert is convert and modelport.parity is parity\n"
            "assert callable(modelport.diff) and callable(modelport.inspect) and modelport.Options.__name__ == 'Options'\n"
            "print(sorted(set(modelport.__all__) - set(dir(modelport))))")
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
    r = run_cli("inspect", two_files / "missing.pt", "--debug")    # after the sub-command too
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
    assert r.returncode == 2 and "n_head (would guess 1)" in r.stderr and "--assume-config" in r.stderr
    r = cli("inspect", root / "examples" / "tiny-gpt2.pt", "--run", "--assume-config")
    assert "note: built with assumed values" in r.stdout and "n_head" in r.stdout
    r = cli("inspect", root / "fixtures" / "t7nn" / "u1net.net", "--run")
    assert r.returncode == 2 and "--input-shape" in r.stderr
    r = cli("inspect", root / "fixtures" / "t7nn" / "u1net.net", "--run", "--input-shape", "1,3,32,32", "--json")
    assert json.loads(r.stdout)["run"]["output"] == [1, 12, 12, 12]


@pytest.mark.parametrize("given", [["--input-shape", "1,3,32,32"], ["--input-dtype", "float64"], ["--arch", "gpt2"],
                                   ["--assume-config"]])
def test_inspect_refuses_run_options_without_run(cli, given):
    """Options that shape the run do nothing without --run: refused in one line (exit 2), never ignored."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = cli("inspect", root / "fixtures" / "t7nn" / "u1net.net", *given)
    assert r.returncode == 2 and r.stdout == ""
    assert f"{given[0]} applies only with --run" in r.stderr and "add --run or drop" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


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


def test_one_count_everywhere_for_a_tied_model(cli, tmp_path):
    """convert, diff and inspect all say '28 tensors + 1 tied alias' for the shipped tied GPT-2."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "tiny-gpt2.pt"
    out = tmp_path / "out.safetensors"
    phrase = "28 tensors + 1 tied alias"
    r = cli("convert", example, out)
    assert r.returncode == 0 and phrase in r.stdout, r.stderr
    r = cli("diff", example, out)
    assert r.returncode == 0 and f"same: {phrase} compared, all equal" in r.stdout
    r = cli("inspect", out)
    assert r.returncode == 0 and r.stdout.splitlines()[2].startswith(phrase)
    assert "(1 tensors)" not in r.stdout and "(1 tensor)" in r.stdout


def test_diff_cast_checks_a_dtype_conversion_within_atol(cli, tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "tiny-gpt2.pt"
    half = tmp_path / "half.safetensors"
    assert cli("convert", example, half, "--dtype", "fp16").returncode == 0
    r = cli("diff", example, half, "--atol", "1e-3")
    assert r.returncode == 1 and "--cast" in r.stderr           # a dtype difference alone counts without --cast
    r = cli("diff", example, half, "--atol", "1e-3", "--cast")
    assert r.returncode == 0 and "values compared across dtypes" in r.stdout
    r = cli("diff", example, half, "--cast")       # exactly the source rounded to fp16: equal even at atol 0
    assert r.returncode == 0, r.stdout


def test_formats_says_what_runs_and_how():
    rows = {r["id"]: r for r in json.loads(CliRunner().invoke(cli, ["formats", "--json"]).output)}
    for fid in ("pt", "safetensors", "hf", "meta", "t7"):
        assert rows[fid]["runnable"] and "--arch" in rows[fid]["runs"], fid
    assert "Lua nn model" in rows["t7"]["runs"] and "Lua" not in rows["pt"]["runs"]



@pytest.mark.slow
def test_ctrl_c_at_any_moment_ends_in_130_one_line_and_no_output(tmp_path):
    """SIGINT at moments spread over a --dtype conversion (start-up, the lazy torch import, the cast, the write):
    exit 130, the one-line message, nothing written, no temporary left."""
    import os
    import signal
    import time
    from pathlib import Path

    import modelport

    root = Path(__file__).resolve().parents[1]
    package_dir = str(Path(modelport.__file__).parent)
    command = [sys.executable, "-m", "modelport", "convert", root / "examples" / "tiny-gpt2.pt"]
    started = time.monotonic()      # how long a whole run takes on this machine now, so the signals land inside it
    subprocess.run([*command, tmp_path / "timing.safetensors"], cwd=root, capture_output=True, check=True)
    whole = time.monotonic() - started
    delays = [whole * (i + 0.5) / 8 for i in range(8)]     # one in each eighth: the torch import alone spans several
    handled = 0
    for i, delay in enumerate(delays):
        out = tmp_path / f"run{i}"
        out.mkdir()
        p = subprocess.Popen([*command, out / "x.safetensors", "--dtype", "fp16"], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        left = sorted(os.listdir(out))
        what = f"delay {delay:.3f}s: rc {p.returncode}, left {left}, stderr {stderr.decode()[-400:]!r}"
        if p.returncode == 0:                      # finished before the signal came
            assert left == ["x.safetensors", "x.safetensors.modelport.json"], what   # the output and its manifest
            continue
        assert left == [] and stdout == b"", what
        if p.returncode == 130:
            assert stderr == b"modelport: interrupted; nothing was written\n", what
            handled += 1
        else:   # Python itself was still starting (site, runpy): no modelport code had run yet
            assert p.returncode in (-signal.SIGINT, 1) and package_dir.encode() not in stderr, what
    assert handled >= 1, "no signal reached modelport's own handler"


NO_TORCH = ("import sys\nsys.modules['torch'] = None   # import torch now fails, as where it is not installed\n"
            "from modelport.cli import main\nsys.argv[0] = 'modelport'\nmain()\n")


def test_weight_conversions_work_without_torch(tmp_path):
    """pt, safetensors, hf, meta and t7 weights convert with torch unimportable; the steps that need torch
    say which extra brings it."""
    from pathlib import Path

    from tests.formats.test_meta import LLAMA2, hf_dir

    root = Path(__file__).resolve().parents[1]
    example = root / "examples" / "tiny-gpt2.pt"
    llama, _ = hf_dir(tmp_path, LLAMA2, seed=7, name="llama")     # made here, with torch and transformers

    def run(*args):
        return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                              cwd=root)

    steps = [(example, tmp_path / "a.safetensors"), (tmp_path / "a.safetensors", tmp_path / "b.pt"),
             (tmp_path / "b.pt", tmp_path / "hf", "--to", "hf", "--config", root / "examples" / "tiny-gpt2.config.json"),
             (llama, tmp_path / "meta", "--to", "meta"), (tmp_path / "meta", tmp_path / "back", "--to", "hf"),
             (root / "fixtures" / "t7nn" / "u1net.net", tmp_path / "u.safetensors"),
             (tmp_path / "u.safetensors", tmp_path / "u.t7")]
    for args in steps:
        r = run("convert", *args)
        assert r.returncode == 0 and r.stdout.startswith("wrote "), (args, r.stderr)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((llama / "config.json").read_text())
    assert run("inspect", tmp_path / "hf").returncode == 0
    for args in (("convert", example, tmp_path / "h.safetensors", "--dtype", "fp16"), ("diff", example, tmp_path / "b.pt"),
                 ("inspect", example, "--run", "--config", root / "examples" / "tiny-gpt2.config.json"),
                 ("convert", example, tmp_path / "g", "--to", "hf", "--assume-config")):
        r = run(*args)
        assert r.returncode == 2 and "pip install 'modelport[torch]'" in r.stderr, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("h.", "g"))) == []

def test_convert_to_onnx_and_torchscript_keeps_jit_notices_out(cli, tmp_path):
    from tests.conftest import run_cli
    from tests.models import tiny

    tiny.gpt2(seed=41).save_pretrained(tmp_path / "src")
    r = cli("convert", tmp_path / "src", tmp_path / "m.onnx", "--opset", "18")
    assert r.returncode == 0, r.stderr
    assert "opset 18" in r.stdout and r.stderr == ""
    # a real process: torch.jit's and transformers' notices would show here
    r = run_cli("convert", tmp_path / "src", tmp_path / "m.pt", "--to", "torchscript", "--method", "trace",
                "--engine", "transformers")
    assert r.returncode == 0, r.stderr
    assert "torchscript" in r.stdout and r.stderr == ""


@pytest.mark.parametrize("args, said", [
    (["convert"], "Missing argument 'SRC'"),
    (["convert", "a.pt", "b.onnx", "--opset", "x"], "'x' is not a valid integer"),
    (["bogus"], "No such command 'bogus'"),
    (["parity", "a", "b", "--atol", "-1"], "-1.0 is not a tolerance"),
    (["parity", "a", "b", "--rtol", "nan"], "nan is not a tolerance"),
    (["diff", "a", "b", "--atol", "inf"], "inf is not a tolerance"),
])
def test_usage_errors_are_one_line_and_exit_2(cli, args, said):
    r = cli(*args)
    assert r.returncode == 2, r
    assert len(r.stderr.strip().splitlines()) == 1 and said in r.stderr and "--help" in r.stderr, r.stderr
    assert r.stderr.startswith("modelport: error: ")


def test_parity_checks_every_path_before_loading_any_model(cli, two_files, monkeypatch):
    import importlib

    def load(*args, **kw):
        raise AssertionError("a model was loaded before every path was checked")

    monkeypatch.setattr(importlib.import_module("modelport.parity"), "parity", load)
    r = cli("parity", two_files / "a.safetensors", two_files / "b.safetensors", two_files / "missing.onnx")
    assert r.returncode == 2 and "missing.onnx: no such file or directory" in r.stderr, r


@pytest.mark.parametrize("dst", ["exists.safetensors", "exists.onnx"])
def test_convert_names_a_missing_source_before_an_existing_destination(cli, tmp_path, dst):
    (tmp_path / dst).write_bytes(b"x")
    r = cli("convert", tmp_path / "missing.pt", tmp_path / dst)
    assert r.returncode == 2 and "missing.pt: no such file or directory" in r.stderr, r
    assert "exists" not in r.stderr.replace(str(tmp_path / "missing.pt"), "")


def test_formats_are_listed_weights_first_then_graphs_then_lua(cli):
    ids = [line.split()[0] for line in cli("formats").stdout.splitlines()[:7]]
    assert ids == ["pt", "safetensors", "hf", "meta", "torchscript", "onnx", "t7"]


@pytest.mark.parametrize("args, flag", [(["x.safetensors", "--opset", "17"], "--opset"),
                                        (["x.pt", "--to", "torchscript", "--static-shapes"], "--static-shapes"),
                                        (["x.onnx", "--method", "trace"], "--method"),
                                        (["x.safetensors", "--input-shape", "1,3"], "--input-shape")])
def test_options_of_another_kind_of_target_are_refused_not_ignored(cli, two_files, args, flag):
    r = cli("convert", two_files / "a.safetensors", two_files / args[0], *args[1:])
    assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
    assert not (two_files / args[0]).exists()


def test_input_shape_on_a_language_model_export_is_refused(cli, tmp_path):
    from tests.models import tiny

    tiny.gpt2(seed=3).save_pretrained(tmp_path / "src")
    r = cli("convert", tmp_path / "src", tmp_path / "m.onnx", "--input-shape", "1,3")
    assert r.returncode == 2 and "--input-shape" in r.stderr and "input_ids" in r.stderr, r
    assert not (tmp_path / "m.onnx").exists()
