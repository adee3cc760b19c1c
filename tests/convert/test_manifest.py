"""The conversion manifest: written with the output, atomically; records transforms; verify re-hashes."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from modelport.convert import convert
from modelport.convert import manifest as mf
from modelport.errors import UnsupportedError

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


def test_file_output_gets_a_manifest_beside_it(tmp_path):
    src = tmp_path / "m.pt"
    torch.save(tied_state_dict(), src)
    dst = tmp_path / "m.safetensors"
    result = convert(src, dst, dtype="fp16")
    man = tmp_path / "m.safetensors.modelport.json"
    assert result.manifest == man and mf.find(dst) == man
    data = mf.load(man)
    assert data["source"]["format"] == "pt" and data["output"]["format"] == "safetensors"
    assert data["source"]["files"] == [{"path": "m.pt", "bytes": src.stat().st_size, "sha256": _sha(src)}]
    assert data["output"]["files"] == [{"path": "m.safetensors", "bytes": dst.stat().st_size, "sha256": _sha(dst)}]
    casts = [t for t in data["transforms"] if t["op"] == "cast"]
    assert casts and casts[0]["from"] == "float32" and casts[0]["to"] == "float16"
    assert "transformer.wte.weight" in casts[0]["tensors"]
    assert {"op": "tie", "tensor": "lm_head.weight", "to": "transformer.wte.weight"} in data["transforms"]
    assert data["versions"]["modelport"] and data["versions"]["torch"] == torch.__version__
    assert data["opset"] is None and data["parity"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.safetensors", "m.safetensors.modelport.json"]


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
    assert data["options"]["config"] == str((llama_pt.parent / "config.json").resolve())
    r = cli("verify", dst)                       # re-hashed, and the parity check run again
    assert r.returncode == 0 and "parity: passed (run again" in r.stdout, r.stdout + r.stderr


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
    assert r.returncode == 2 and "not a readable modelport manifest" in r.stderr


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
    assert data["output"]["files"][0]["sha256"] == _sha(tmp_path / "m.onnx") and data["opset"] == 17
    assert (data["source"]["format"], data["source"]["layout"], data["output"]["architecture"]) == ("hf", "gpt2-hf", "gpt2")
    assert any(line.startswith(f"converted from {tmp_path / 'src'} (hf, gpt2-hf)") for line in mf.summary(data))
    assert convert(tmp_path / "src", tmp_path / "n.onnx", manifest=False).manifest is None
    assert not (tmp_path / "n.onnx.modelport.json").exists()
