"""Manifests and markers are untrusted input: a planted ``.modelport.json`` runs nothing, hashes nothing
outside its model, breaks no command and lets ``--force`` empty no directory (issue 16, items 1, 5, 6, 7)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct

import pytest

from modelport.atomic import MARKER
from modelport.convert import manifest as mf
from modelport.errors import FormatError

from .hostile import run_measured, write_safetensors

FLOATS16 = struct.pack("<4f", 1, 2, 3, 4)


def _one_line_exit_2(r, match: str | None = None) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    if match:
        assert match in r.stderr, r.stderr


def _model(tmp_path, name="model.safetensors"):
    return write_safetensors(tmp_path / name, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, FLOATS16)


def _entry(path, name=None) -> dict:
    data = path.read_bytes()
    return {"path": name or path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(model, **over) -> dict:
    """A well-formed manifest for the file ``model`` (its hash right), with ``over`` replacing keys."""
    data = {"written_by": "modelport", "version": "0", "format": "safetensors", "schema": mf.SCHEMA,
            "created": "2026-01-01T00:00:00+00:00",
            "source": {"path": str(model), "format": "safetensors", "layout": None, "directory": False, "files": []},
            "output": {"path": str(model), "format": "safetensors", "layout": None, "architecture": None, "tensors": 1,
                       "directory": False, "files": [_entry(model)]},
            "transforms": [], "options": {}, "opset": None, "parity": None, "versions": {"modelport": "0"}}
    data.update(over)
    return data


def _plant(model, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    model.with_name(model.name + mf.SUFFIX).write_text(text)


def _parity(**over) -> dict:
    return {"passed": True, "seed": 0, "new_tokens": 2, "inputs": [{"seq_len": 3, "shapes": {"input_ids": [2, 3]}}],
            **over}


# -- 1. a manifest names no code -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["subprocess:run", "os:system", "builtins:exec", "no_such_family"])
def test_a_planted_manifest_runs_no_module(tmp_path, cli, arch):
    model = _model(tmp_path)
    pwned = tmp_path / "pwned"
    _plant(model, _manifest(model, parity=_parity(),
                            options={"arch": arch, "config": {"args": ["sh", "-c", f"touch {pwned}"]}}))
    report = mf.verify(mf.find(model), rerun=lambda plan: pytest.fail(f"parity run again with {plan}"))
    assert report and report.parity is None and "not a built-in family" in report.notes[0]
    r = cli("verify", model)
    assert r.returncode == 0, r.stderr
    assert "pass --arch" in r.stdout and r.stdout.splitlines()[-1].startswith("verified: 1 file checked, all match")
    assert not pwned.exists()


def test_a_recorded_config_is_checked_like_any_config(tmp_path, cli):
    model = _model(tmp_path)
    _plant(model, _manifest(model, parity=_parity(), options={"arch": "llama", "config": {"args": ["sh", "-c", "id"]}}))
    _one_line_exit_2(cli("verify", model), "the recorded config is not usable")
    for config in ({"model_type": "llama", "architectures": 1.5}, {"model_type": "llama", "rope_scaling": {"factor": "x"}}):
        _plant(model, _manifest(model, parity=_parity(), options={"arch": "llama", "config": config}))
        _one_line_exit_2(cli("verify", model), "the recorded config is not usable")
    # an older manifest's config path outside the manifest's directory is not read
    _plant(model, _manifest(model, parity=_parity(), options={"arch": "llama", "config": "/etc/passwd"}))
    report = mf.verify(mf.find(model), rerun=lambda plan: pytest.fail("ran"))
    assert any("pass --config" in n for n in report.notes)


@pytest.mark.parametrize("parity", [_parity(new_tokens=10**9), _parity(inputs=[{"seq_len": 10**9}]),
                                    _parity(inputs=[{"seq_len": 3, "shapes": {"input_ids": [10**6, 3]}}]),
                                    _parity(inputs=[{"seq_len": 4000, "shapes": {"input_ids": [30, 4000]}}]),
                                    _parity(inputs=[{"seq_len": 1}] * 100), _parity(seed=-1), _parity(seed=1.5)])
def test_recorded_input_sizes_are_bounded(tmp_path, cli, parity):
    model = _model(tmp_path)
    _plant(model, _manifest(model, parity=parity))
    with pytest.raises(FormatError, match="manifest key manifest.parity"):
        mf.verify(mf.find(model), rerun=lambda plan: pytest.fail("ran"))
    _one_line_exit_2(cli("verify", model), "manifest key manifest.parity")


# -- 5. --force trusts no marker it cannot read as modelport's ---------------------------------------

def _users_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("1,2")
    return d


def _still_there(d) -> None:
    assert (d / "thesis.tex").read_text() == "years of work" and (d / "sub" / "data.csv").read_text() == "1,2"
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".out")] == []


def _marker_cases(tmp_path):
    good = tmp_path / "elsewhere.json"
    good.write_text(json.dumps({"written_by": "modelport", "format": "safetensors", "files": ["thesis.tex", "sub/data.csv"]}))
    return {
        "empty": lambda d: (d / MARKER).write_text(""),
        "not json": lambda d: (d / MARKER).write_bytes(b"\xff\x00"),
        "another program's": lambda d: (d / MARKER).write_text('{"written_by": "other"}'),
        "old bare marker listing nothing": lambda d: (d / MARKER).write_text('{"written_by": "modelport", "format": "hf"}'),
        "a link to a marker listing everything": lambda d: (d / MARKER).symlink_to(good),
        "a directory": lambda d: (d / MARKER).mkdir(),
        "a fifo": lambda d: os.mkfifo(d / MARKER),
        "lists only part": lambda d: (d / MARKER).write_text(
            json.dumps({"written_by": "modelport", "files": ["thesis.tex"]})),
        "lists a parent path": lambda d: (d / MARKER).write_text(
            json.dumps({"written_by": "modelport", "files": ["../thesis.tex", "sub/data.csv"]})),
        "a manifest of a file output": lambda d: (d / MARKER).write_text(json.dumps(_manifest(d / "thesis.tex"))),
        "deeply nested": lambda d: (d / MARKER).write_text('{"written_by": "modelport", "files": ' + "[" * 100000 + "]" * 100000 + "}"),
    }


@pytest.mark.parametrize("case", ["empty", "not json", "another program's", "old bare marker listing nothing",
                                  "a link to a marker listing everything", "a directory", "a fifo", "lists only part",
                                  "lists a parent path", "a manifest of a file output", "deeply nested"])
def test_force_does_not_empty_a_directory_on_a_marker_it_cannot_trust(tmp_path, cli, case):
    d = _users_dir(tmp_path)
    _marker_cases(tmp_path)[case](d)
    src = _model(tmp_path, "m.safetensors")
    r = cli("convert", src, d, "--to", "hf", "--force", "--assume-config")
    _one_line_exit_2(r, "is a directory that modelport did not write")
    _still_there(d)


def test_force_keeps_a_file_added_to_modelports_own_directory(tmp_path, cli):
    d = tmp_path / "out"
    d.mkdir()
    (d / "a.bin").write_bytes(b"x")
    (d / MARKER).write_text(json.dumps({"written_by": "modelport", "files": ["a.bin"]}))
    (d / "thesis.tex").write_text("years of work")
    from modelport.atomic import atomic_output
    from modelport.errors import DestinationExistsError

    with pytest.raises(DestinationExistsError, match="does not list 'thesis.tex'"):
        with atomic_output(d, force=True) as tmp:
            tmp.mkdir()
    assert (d / "thesis.tex").is_file() and (d / "a.bin").is_file()
    (d / "thesis.tex").unlink()
    with atomic_output(d, force=True) as tmp:           # every entry listed: replaced
        tmp.mkdir()
        (tmp / "b.bin").write_bytes(b"y")
    assert sorted(p.name for p in d.iterdir()) == ["b.bin"]


# -- 6. verify hashes only regular files inside the model ---------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../secret", "a/../../secret", "", "a\\..\\secret"])
def test_verify_refuses_paths_outside(tmp_path, cli, name):
    (tmp_path / "secret").write_text("s3cret")
    home = tmp_path / "m"
    home.mkdir()
    model = _model(home)
    data = _manifest(model)
    data["output"]["files"].append({"path": name, "bytes": 1, "sha256": "0" * 64})
    _plant(model, data)
    r = cli("verify", model, "--json")
    _one_line_exit_2(r, "not a plain relative path")
    assert r.stdout == ""


def test_verify_refuses_links_out_and_pipes_without_hashing(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    home = tmp_path / "m"
    home.mkdir()
    model = _model(home)
    (home / "link").symlink_to(secret)
    os.mkfifo(home / "pipe")
    for name in ("link", "pipe"):
        data = _manifest(model)
        data["output"]["files"].append({"path": name, "bytes": 6, "sha256": "0" * 64})
        _plant(model, data)
        r = run_measured(["verify", model, "--json"], timeout=20)
        assert r["rc"] == 2, r
        assert "not a regular file inside" in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1, r["stderr"]
        assert hashlib.sha256(b"s3cret").hexdigest() not in r["stdout"] and r["stdout"] == ""


@pytest.mark.parametrize("root", ["/etc", "/proc/self"])
def test_a_source_outside_the_manifest_is_not_hashed(tmp_path, cli, root):
    model = _model(tmp_path)
    data = _manifest(model, source={"path": root, "format": "pt", "directory": True,
                                    "files": [{"path": "passwd", "bytes": 1, "sha256": "0" * 64},
                                              {"path": "pagemap", "bytes": 1, "sha256": "0" * 64}]})
    _plant(model, data)
    r = cli("verify", model, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [f["role"] for f in out["files"]] == ["output"] and "pass --source" in out["notes"][0]
    assert out["summary"] == "verified: 1 file checked, all match"


# -- 7. a malformed manifest is one line, and inspect still shows the model ------------------------------

def _malformed(model) -> dict:
    good = _manifest(model)

    def with_(path, value):
        data = copy.deepcopy(good)
        *parents, last = path
        node = data
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return data

    return {
        "missing source": with_(["source"], KeyError),
        "output a list": with_(["output"], [1, 2]),
        "files a string": with_(["output", "files"], "model.safetensors"),
        "file path an int": with_(["output", "files", 0, "path"], 7),
        "sha256 missing": with_(["output", "files", 0, "sha256"], KeyError),
        "sha256 not hex": with_(["output", "files", 0, "sha256"], "z" * 64),
        "bytes negative": with_(["output", "files", 0, "bytes"], -1),
        "directory a string": with_(["output", "directory"], "yes"),
        "parity a string": with_(["parity"], "passed"),
        "transform without op": with_(["transforms"], [{"tensor": "w"}]),
        "options a list": with_(["options"], ["arch"]),
        "arch an int": with_(["options"], {"arch": 5}),
        "versions nested": with_(["versions"], {"modelport": {"x": 1}}),
        "opset a string": with_(["opset"], "17"),
        "source path null": with_(["source", "path"], None),
        "a list": [good],
        "deep": '{"schema": "modelport.manifest/1", "source": ' + "[" * 50000 + "]" * 50000 + "}",
        "nan": json.dumps(good).replace('"tensors": 1', '"tensors": NaN'),
        "huge int": json.dumps(good).replace('"tensors": 1', '"tensors": 1' + "0" * 5000),
        "not utf-8": "\udcff",
    }


CASES = ["missing source", "output a list", "files a string", "file path an int", "sha256 missing", "sha256 not hex",
         "bytes negative", "directory a string", "parity a string", "transform without op", "options a list",
         "arch an int", "versions nested", "opset a string", "source path null", "a list", "deep", "nan", "huge int",
         "not utf-8"]


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_manifest_is_refused_in_one_line(tmp_path, cli, case):
    model = _model(tmp_path)
    payload = _malformed(model)[case]
    if payload == "\udcff":
        model.with_name(model.name + mf.SUFFIX).write_bytes(b'{"schema": "\xff"}')
    else:
        _plant(model, payload)
    with pytest.raises(FormatError):
        mf.load_manifest(mf.find(model))
    _one_line_exit_2(cli("verify", model), str(model) + mf.SUFFIX)
    r = cli("inspect", model)
    assert r.returncode == 0, r.stderr
    assert "w " in r.stdout or "w\n" in r.stdout or " w" in r.stdout        # the model is still shown
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: manifest ignored:")]
    assert len(notes) == 1, r.stdout
    assert "manifest_note" in json.loads(cli("inspect", model, "--json").stdout)


def test_a_manifest_that_verifies_nothing_is_refused(tmp_path, cli):
    model = _model(tmp_path)
    data = _manifest(model)
    data["output"]["files"] = []
    _plant(model, data)
    _one_line_exit_2(cli("verify", model), "nothing to verify")
    data["source"] = {"path": "/elsewhere/m.pt", "format": "pt", "directory": False,
                      "files": [{"path": "m.pt", "bytes": 1, "sha256": "0" * 64}]}
    _plant(model, data)                      # only a source it may not check: still nothing
    _one_line_exit_2(cli("verify", model), "nothing to verify")


def test_verify_on_a_directory_without_a_manifest(tmp_path, cli):
    (tmp_path / "d").mkdir()
    r = cli("verify", tmp_path / "d")
    _one_line_exit_2(r, "has no modelport manifest (no .modelport.json in the directory)")
    assert "Errno" not in r.stderr
    (tmp_path / "d" / MARKER).write_text(json.dumps({"written_by": "modelport", "format": "hf", "files": []}))
    _one_line_exit_2(cli("verify", tmp_path / "d"), "--no-manifest")
    _one_line_exit_2(cli("verify", tmp_path / "nowhere"), "no such file or directory")


def test_a_torchscript_source_named_by_a_manifest_is_not_run(tmp_path):
    import torch

    model = _model(tmp_path)
    ts = tmp_path / "source.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(ts))
    _plant(model, _manifest(model, parity=_parity(), source={"path": str(ts), "format": "torchscript",
                                                             "directory": False, "files": [_entry(ts)]}))
    report = mf.verify(mf.find(model), rerun=lambda plan: pytest.fail("ran the archive the manifest named"))
    assert report and "TorchScript archive" in report.notes[0] and len(report.files) == 2
    plans = []
    mf.verify(mf.find(model), rerun=lambda plan: plans.append(plan) or {"passed": True}, source=ts)   # named: runs
    assert plans[0].reference == ts


@pytest.mark.parametrize("name", ["x" * 300, "a/" * 2100 + "b"])
def test_a_file_name_longer_than_the_filesystem_takes_is_refused_in_one_line(tmp_path, cli, name):
    """Found by the soak: an over-long name made the lookup raise ENAMETOOLONG (a traceback)."""
    model = _model(tmp_path)
    data = _manifest(model)
    data["output"]["files"][0]["path"] = name
    _plant(model, data)
    _one_line_exit_2(cli("verify", model), "longer than a file name can be")
    r = cli("inspect", model)
    assert r.returncode == 0 and "manifest ignored" in r.stdout + r.stderr and "Traceback" not in r.stderr
