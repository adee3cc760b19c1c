"""The conversion manifest: written with the output, atomically; records transforms; verify re-hashes."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from modelport.convert import convert
from modelport.convert import manifest as mf
from modelport.convert.hashing import hash_file
from modelport.errors import FormatError, MissingDependencyError, UnsupportedError

from ..conftest import tied_state_dict
from ..models import tiny


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def llama_pt(tmp_path):
    m = tiny.llama(seed=2)
    torch.save(m.state_dict(), tmp_path / "llama.pt")
    (tmp_path / "config.json").write_text(json.dumps(m.config.to_dict()))
    return tmp_path / "llama.pt"


def test_file_output_gets_a_manifest_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_HASH", "sha256")
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    result = convert(src, dst, dtype="fp16")
    man = tmp_path / "m.safetensors.modelport.json"
    assert result.manifest == man and mf.find(dst) == man
    data = mf.load(man)
    assert data["source"]["format"] == "pt" and data["output"]["format"] == "safetensors"
    assert data["source"]["files"] == [{"path": "m.pt", "bytes": src.stat().st_size, "hash": "sha256",
                                       "sha256": _sha(src)}]
    assert data["output"]["files"] == [{"path": "m.safetensors", "bytes": dst.stat().st_size, "hash": "sha256",
                                       "sha256": _sha(dst)}]
    casts = [t for t in data["transforms"] if t["op"] == "cast"]
    assert casts and casts[0]["from"] == "float32" and casts[0]["to"] == "float16"
    assert "transformer.wte.weight" in casts[0]["tensors"]
    assert {"op": "tie", "tensor": "lm_head.weight", "to": "transformer.wte.weight"} in data["transforms"]
    assert data["versions"]["modelport"] and data["versions"]["torch"] == torch.__version__
    assert data["opset"] is None and data["parity"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.safetensors", "m.safetensors.modelport.json"]


@pytest.mark.parametrize("to", ["pt", "safetensors", "hf"])
def test_the_outputs_weights_are_hashed_as_written_not_read_again(tmp_path, monkeypatch, to):
    """The streaming writers hash their files beside the copy; after the write only what they did not
    write (a directory's config.json) is read again, and every digest is the finished file's."""
    monkeypatch.setenv("MODELPORT_HASH", "sha256")
    m = tiny.llama(seed=4)
    src = tmp_path / "src"
    src.mkdir()
    from safetensors.torch import save_file

    save_file(m.state_dict(), src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(m.config.to_dict()))
    hashing = importlib.import_module("modelport.convert.hashing")
    real, read_again = hashing.hash_file, []

    def counting(path, *args):
        read_again.append(Path(path).resolve())
        return real(path, *args)

    monkeypatch.setattr(hashing, "hash_file", counting)
    dst = tmp_path / {"pt": "out.pt", "safetensors": "out.safetensors", "hf": "out"}[to]
    convert(src, dst, to=to)
    data = mf.load(mf.find(dst))
    root = dst if dst.is_dir() else dst.parent
    for f in data["output"]["files"]:
        assert f["sha256"] == _sha(root / f["path"]), f["path"]
    read_from_output = [p.name for p in read_again if not p.is_relative_to(src.resolve())]
    assert all(name.endswith(".json") for name in read_from_output), read_from_output
    assert (src / "model.safetensors").resolve() in read_again     # the source is hashed as it is read


def test_layout_mapping_records_renames_permutes_and_merges(tmp_path, llama_pt):
    meta = tmp_path / "meta"
    convert(llama_pt, meta, to="meta", options=_opts(config=tmp_path / "config.json"))
    data = mf.load(meta / mf.DIR_NAME)
    assert data["source"]["layout"] == "llama-hf" and data["output"]["layout"] == "llama-meta"
    assert data["output"]["architecture"] == "llama" and data["output"]["directory"] is True
    ops = [t["op"] for t in data["transforms"]]
    assert ops.count("permute_rope_hf_to_meta") == 6          # wq and wk of 3 layers
    assert {"op": "rename", "from": "model.embed_tokens.weight", "to": "tok_embeddings.weight"} in data["transforms"]
    assert {"op": "permute_rope_hf_to_meta", "tensor": "layers.1.attention.wk.weight",
            "args": {"n_heads": 2}} in data["transforms"]
    assert {f["path"] for f in data["output"]["files"]} == {"consolidated.00.pth", "params.json", "hf_config.json"}
    # back to HF: the way back is recorded too, and the source's own manifest is not carried along
    hf = tmp_path / "hf"
    convert(meta, hf, to="hf")
    back = mf.load(hf / mf.DIR_NAME)
    assert [t["op"] for t in back["transforms"]].count("permute_rope_meta_to_hf") == 6
    assert back["source"]["directory"] and mf.DIR_NAME not in {f["path"] for f in back["source"]["files"]}
    assert mf.load(hf / mf.DIR_NAME)["output"]["path"] == str(hf.resolve())


def test_shard_splits_are_recorded(tmp_path, llama_pt):
    hf = tmp_path / "hf"
    convert(llama_pt, hf, to="hf", shard_size=8000, options=_opts(config=tmp_path / "config.json"))
    data = mf.load(hf / mf.DIR_NAME)
    split = [t for t in data["transforms"] if t["op"] == "split_weight_shards"]
    assert len(split) == 1 and len(split[0]["files"]) > 2
    again = tmp_path / "again.safetensors"
    convert(hf, again)
    joined = [t for t in mf.load(mf.find(again))["transforms"] if t["op"] == "join_weight_shards"]
    assert joined and joined[0]["files"] == split[0]["files"]


def test_model_parallel_splits_and_merges_are_recorded(tmp_path):
    """The split from what the Meta writer reports, the merge from the Meta source's files."""
    hf, meta = tmp_path / "hf", tmp_path / "meta"
    tiny.llama(seed=3, vocab_size=38).save_pretrained(hf)      # an even vocabulary: the output splits in two
    convert(hf, meta, to="meta", options=_opts(shards=2))
    assert {"op": "split_model_parallel_shards", "shards": 2} in mf.load(meta / mf.DIR_NAME)["transforms"]
    again = tmp_path / "again.safetensors"
    convert(meta, again)
    merged = [t for t in mf.load(mf.find(again))["transforms"] if t["op"].endswith("_shards")]
    assert merged == [{"op": "merge_model_parallel_shards", "files": ["consolidated.00.pth", "consolidated.01.pth"]}]


def test_no_manifest_writes_none_and_removes_a_stale_one(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    convert(src, dst)
    assert mf.find(dst)
    result = convert(src, dst, force=True, manifest=False)
    assert result.manifest is None and mf.find(dst) is None


def test_a_failed_conversion_leaves_no_manifest(tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"w": torch.tensor([1e6, 1.0])}, src)
    dst = tmp_path / "m.safetensors"
    with pytest.raises(UnsupportedError, match="beyond float16"):
        convert(src, dst, dtype="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


FAST = {"seq_lens": (3,), "new_tokens": 2, "batch": 2}


def test_parity_verdict_and_metrics_are_kept_and_rerun(llama_pt, cli):
    from modelport.formats.base import Options

    dst = llama_pt.parent / "m.safetensors"
    result = convert(llama_pt, dst, options=Options(config=llama_pt.parent / "config.json"), verify=FAST)
    data = mf.load(result.manifest)
    assert data["parity"]["passed"] is True and data["parity"]["seed"] == 0
    assert [i["seq_len"] for i in data["parity"]["inputs"]] == [3]
    assert mf.summary(data)[-2] == "parity: passed"
    assert data["options"]["config_file"] == str((llama_pt.parent / "config.json").resolve())
    assert data["options"]["config"] == json.loads((llama_pt.parent / "config.json").read_text())   # recorded as JSON
    r = cli("verify", dst)                       # re-hashed, and the parity check run again
    assert r.returncode == 0 and "parity: passed (run again" in r.stdout, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "verified: 2 files checked, all match; parity passed"


def test_a_weights_only_output_is_verified_with_the_sources_config(tmp_path, cli):
    """An HF directory converted to bare safetensors with --verify: `modelport verify` runs the output with
    the source's config, as the conversion did, and asks for no --config."""
    tiny.llama(seed=6).save_pretrained(tmp_path / "hf")
    dst = tmp_path / "w.safetensors"
    convert(tmp_path / "hf", dst, verify=FAST)
    r = cli("verify", dst)
    assert r.returncode == 0 and "parity: passed (run again" in r.stdout, r.stdout + r.stderr


def test_verify_rehashes_and_finds_changes(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    convert(src, dst)
    report = mf.verify(mf.find(dst))
    assert report and len(report.files) == 2 and not report.notes
    assert report.summary() == "verified: 2 files checked, all match"
    data = bytearray(dst.read_bytes())
    data[-1] ^= 1
    dst.write_bytes(bytes(data))
    report = mf.verify(mf.find(dst))
    assert not report and [f.role for f in report.files if not f.ok] == ["output"]
    src.unlink()
    assert [f.actual for f in mf.verify(mf.find(dst)).files if f.role == "source"] == [None]


def test_verify_says_when_no_parity_was_recorded(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    result = convert(src, tmp_path / "m.safetensors")
    report = mf.verify(result.manifest, rerun=lambda data: pytest.fail("no parity to re-run"))
    assert report and report.parity is None


def test_cli_verify_inspect_and_no_manifest(tmp_path, cli):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    r = cli("convert", src, dst)
    assert r.returncode == 0 and "manifest: " in r.stdout
    r = cli("verify", dst)
    assert r.returncode == 0 and r.stdout.count("ok ") == 2
    r = cli("inspect", dst)
    assert "manifest (" in r.stdout and "converted from" in r.stdout
    r = cli("inspect", dst, "--json")
    assert json.loads(r.stdout)["manifest"]["schema"] == mf.SCHEMA
    dst.write_bytes(dst.read_bytes()[:-1] + b"\0")
    r = cli("verify", tmp_path / "m.safetensors.modelport.json")
    assert r.returncode == 1 and "CHANGED  output" in r.stdout
    r = cli("convert", src, tmp_path / "n.safetensors", "--no-manifest")
    assert r.returncode == 0 and not (tmp_path / "n.safetensors.modelport.json").exists()
    r = cli("verify", tmp_path / "n.safetensors")
    assert r.returncode == 2 and "has no modelport manifest (no n.safetensors.modelport.json beside it)" in r.stderr


def _opts(**kw):
    from modelport.formats.base import Options

    return Options(**{k: v for k, v in kw.items() if v is not None})


def test_a_directory_manifest_is_the_marker_that_lets_force_replace_it(tmp_path, llama_pt):
    out = tmp_path / "hf"
    convert(llama_pt, out, to="hf", options=_opts(config=tmp_path / "config.json"))
    data = json.loads((out / ".modelport.json").read_text())
    assert data["written_by"] == "modelport" and data["schema"] == mf.SCHEMA and data["format"] == "hf"
    convert(llama_pt, out, to="hf", force=True, manifest=False, options=_opts(config=tmp_path / "config.json"))
    assert (out / ".modelport.json").is_file() and mf.read(out) is None     # the bare marker stays
    convert(llama_pt, out, to="hf", force=True, options=_opts(config=tmp_path / "config.json"))
    assert mf.read(out)["output"]["format"] == "hf"


def test_a_graph_export_through_the_api_gets_a_manifest(tmp_path):
    tiny.gpt2(seed=5).save_pretrained(tmp_path / "src")
    result = convert(tmp_path / "src", tmp_path / "m.onnx")
    assert result.manifest == tmp_path / "m.onnx.modelport.json"
    data = mf.load(result.manifest)
    entry = data["output"]["files"][0]
    assert entry[entry["hash"]] == hash_file(tmp_path / "m.onnx", entry["hash"]) and data["opset"] == 17
    assert (data["source"]["format"], data["source"]["layout"], data["output"]["architecture"]) == ("hf", "gpt2-hf", "gpt2")
    assert any(line.startswith(f"converted from {tmp_path / 'src'} (hf, gpt2-hf)") for line in mf.summary(data))
    assert convert(tmp_path / "src", tmp_path / "n.onnx", manifest=False).manifest is None
    assert not (tmp_path / "n.onnx.modelport.json").exists()


def test_a_source_outside_the_manifests_directory_is_checked_when_named(tmp_path, llama_pt, cli):
    out = tmp_path / "hf"
    convert(llama_pt, out, to="hf", options=_opts(config=tmp_path / "config.json"))
    report = mf.verify(out / mf.DIR_NAME)
    assert report and {f.role for f in report.files} == {"output"} and "pass --source" in report.notes[0]
    report = mf.verify(out / mf.DIR_NAME, source=llama_pt)
    assert report and [f.role for f in report.files].count("source") == 1
    llama_pt.write_bytes(llama_pt.read_bytes()[:-1] + b"\1")
    assert not mf.verify(out / mf.DIR_NAME, source=llama_pt)
    r = cli("verify", out, "--source", llama_pt)
    assert r.returncode == 1 and "CHANGED  source" in r.stdout
    assert r.stdout.splitlines()[-1] == "NOT verified: 1 of 3 files changed or missing"
    with pytest.raises(FormatError, match="records a source file"):
        mf.verify(out / mf.DIR_NAME, source=tmp_path)


def _with_parity(tmp_path, **options):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    convert(src, dst, force=True)
    data = json.loads(mf.find(dst).read_text())
    data["parity"] = {"passed": True, "seed": 3, "new_tokens": 2, "inputs": [{"seq_len": 5, "shapes": {"input_ids": [2, 5]}}]}
    data["options"] = options
    mf.find(dst).write_text(json.dumps(data))
    return src, dst


def test_the_recorded_parity_check_runs_again_only_on_what_may_run(tmp_path):
    plans = []
    src, dst = _with_parity(tmp_path, arch="GPT2")
    report = mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True})
    assert report and report.parity == {"passed": True}
    plan = plans.pop()
    assert (plan.reference, plan.candidate) == (src.resolve(), dst.parent / dst.name)
    assert plan.kwargs == {"seed": 3, "new_tokens": 2, "arch": "gpt2", "config": None, "seq_lens": (5,), "batch": 2}
    src, dst = _with_parity(tmp_path, arch="tests.models.tiny:gpt2")      # a user module: only when named again
    report = mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan))
    assert report and report.parity is None and not plans and "pass --arch" in report.notes[0]
    assert report.summary() == "verified: 2 files checked, all match; parity not run again (see the note)"
    mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True}, arch="tests.models.tiny:gpt2")
    assert plans.pop().kwargs["arch"] == "tests.models.tiny:gpt2"
    src, dst = _with_parity(tmp_path, arch="tests.models.tiny:gpt2", config={"n_layer": 1})
    report = mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan), arch="tests.models.tiny:gpt2")
    assert not plans and "pass it with --config" in report.notes[0]         # its kwargs come from the user only
    cfg = tmp_path / "kwargs.json"
    cfg.write_text('{"n_layer": 1}')
    mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True}, arch="tests.models.tiny:gpt2",
              config=cfg)
    assert plans.pop().kwargs["config"] == cfg


def test_a_recorded_config_file_is_read_only_inside_the_manifests_directory(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny.gpt2(seed=1).config.to_dict()))
    plans = []
    _, dst = _with_parity(tmp_path, arch="gpt2", config=str(cfg))       # the spelling of earlier manifests
    mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True})
    assert plans.pop().kwargs["config"]["model_type"] == "gpt2"
    _, dst = _with_parity(tmp_path, arch="gpt2", config=json.loads(cfg.read_text()))
    mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True})
    assert plans.pop().kwargs["config"] == json.loads(cfg.read_text())
    with pytest.raises(FormatError, match="recorded config is not usable"):
        _, dst = _with_parity(tmp_path, arch="gpt2", config={"model_type": "llama"})
        mf.verify(mf.find(dst), rerun=lambda plan: pytest.fail("ran"))


def test_load_manifest_names_the_key(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    convert(src, dst)
    data = json.loads(mf.find(dst).read_text())
    assert mf.load_manifest(mf.find(dst)) == data
    data["output"]["files"][0]["bytes"] = "12"
    mf.find(dst).write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"manifest key manifest.output.files\[0\].bytes is a string \('12'\), not an "
                                          "integer"):
        mf.load_manifest(mf.find(dst))
    assert mf.read(dst) is None and "manifest ignored" in mf.read_with_note(dst)[1]


def test_a_tensor_models_parity_record_loads_and_runs_again_without_token_sizes(tmp_path):
    plans = []
    _, dst = _with_parity(tmp_path)
    data = json.loads(mf.find(dst).read_text())
    data["parity"]["inputs"] = [{"label": "input [1, 3, 224, 224]", "seq_len": 0, "left_pad": 0,
                                 "shapes": {"input": [1, 3, 224, 224]}, "dtypes": {"input": "float32"}}]
    mf.find(dst).write_text(json.dumps(data))
    mf.verify(mf.find(dst), rerun=lambda plan: plans.append(plan) or {"passed": True})
    assert "seq_lens" not in plans[0].kwargs and "batch" not in plans[0].kwargs


# -- the content hash: blake3 when installed, sha256 otherwise; each entry names its algorithm --------


def _converted(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    convert(src, dst)
    return src, dst


def test_without_blake3_the_manifest_records_sha256(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELPORT_HASH", raising=False)
    monkeypatch.setitem(sys.modules, "blake3", None)          # as where the package is not installed
    src, dst = _converted(tmp_path)
    files = mf.load(mf.find(dst))["source"]["files"] + mf.load(mf.find(dst))["output"]["files"]
    assert [(f["hash"], f["sha256"]) for f in files] == [("sha256", _sha(src)), ("sha256", _sha(dst))]
    assert mf.verify(mf.find(dst))


def test_blake3_when_installed_and_verify_checks_it(tmp_path, monkeypatch):
    blake3 = pytest.importorskip("blake3")
    monkeypatch.delenv("MODELPORT_HASH", raising=False)
    src, dst = _converted(tmp_path)
    data = mf.load(mf.find(dst))
    out = data["output"]["files"][0]
    assert out["hash"] == "blake3" and "sha256" not in out
    assert out["blake3"] == blake3.blake3(dst.read_bytes()).hexdigest()
    assert data["source"]["files"][0]["blake3"] == blake3.blake3(src.read_bytes()).hexdigest()
    assert mf.verify(mf.find(dst))
    dst.write_bytes(dst.read_bytes()[:-1] + bytes([dst.read_bytes()[-1] ^ 1]))
    assert [f.role for f in mf.verify(mf.find(dst)).files if not f.ok] == ["output"]
    monkeypatch.setitem(sys.modules, "blake3", None)
    with pytest.raises(MissingDependencyError, match="pip install blake3"):
        mf.verify(mf.find(dst))


def test_an_old_manifest_without_hash_verifies_by_sha256(tmp_path, monkeypatch):
    src, dst = _converted(tmp_path)
    man = mf.find(dst)
    data = json.loads(man.read_text())
    for side, path in (("source", src), ("output", dst)):
        data[side]["files"] = [{"path": path.name, "bytes": path.stat().st_size, "sha256": _sha(path)}]
    man.write_text(json.dumps(data))
    assert mf.verify(man) and all(f.expected == _sha(Path(f.path)) for f in mf.verify(man).files)
    dst.write_bytes(dst.read_bytes() + b"x")
    assert not mf.verify(man)


def test_an_unknown_hash_name_is_refused_naming_the_manifest(tmp_path):
    _, dst = _converted(tmp_path)
    man = mf.find(dst)
    data = json.loads(man.read_text())
    data["output"]["files"][0]["hash"] = "crc32"
    man.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"m.safetensors.modelport.json: manifest key manifest.output.files.0..hash is a string \('crc32'\), not blake3 or sha256"):
        mf.verify(man)
