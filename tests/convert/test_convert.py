import pytest
import torch
from safetensors.torch import load_file, save_file

import modelport
from modelport.atomic import MARKER
from modelport.errors import DestinationExistsError, FormatError, OverlapError, UnsupportedError
from modelport.formats.base import Options
from modelport.formats import safetensors as st_adapter
from tests.conftest import bitwise_equal


@pytest.fixture
def src(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {"w": torch.randn(5, 6, generator=g), "h": torch.randn(7, generator=g).half(), "ids": torch.arange(4)}
    path = tmp_path / "src.safetensors"
    save_file(tensors, path)
    return path, tensors


@pytest.mark.parametrize("flag, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_dtype_cast_equals_torch_cast(src, tmp_path, flag, dtype):
    path, tensors = src
    modelport.convert(path, tmp_path / "out.safetensors", dtype=flag)
    out = load_file(tmp_path / "out.safetensors")
    assert bitwise_equal(out["w"], tensors["w"].to(dtype))
    assert bitwise_equal(out["h"], tensors["h"].to(dtype))
    assert bitwise_equal(out["ids"], tensors["ids"])  # integers are never cast


def test_fp16_overflow_names_the_tensor_unless_allowed(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"ok": torch.ones(2), "huge": torch.tensor([1.0, 70000.0])}, path)
    with pytest.raises(UnsupportedError, match="'huge'.*--allow-overflow"):
        modelport.convert(path, tmp_path / "out.safetensors", dtype="fp16")
    assert not (tmp_path / "out.safetensors").exists()
    modelport.convert(path, tmp_path / "out.safetensors", dtype="fp16", allow_overflow=True)
    assert load_file(tmp_path / "out.safetensors")["huge"][1].item() == float("inf")


def test_existing_destination_is_refused_and_kept(src, tmp_path):
    path, _ = src
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(DestinationExistsError, match="force=True"):
        modelport.convert(path, dst)
    assert dst.read_bytes() == b"precious"
    modelport.convert(path, dst, force=True)
    assert set(load_file(dst)) == {"w", "h", "ids"}


def test_unknown_target_suffix_and_format(src, tmp_path):
    path, _ = src
    with pytest.raises(UnsupportedError, match="--to"):
        modelport.convert(path, tmp_path / "out.weird")
    with pytest.raises(UnsupportedError, match="unknown format 'nope'"):
        modelport.convert(path, tmp_path / "out.weird", to="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_destination_equal_to_source_is_refused(src):
    path, _ = src
    before = path.read_bytes()
    with pytest.raises(OverlapError, match="is the source"):
        modelport.convert(path, path, force=True)
    assert path.read_bytes() == before


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hf_options(tmp_path):
    config = tmp_path.parent / f"{tmp_path.name}-config.json"
    config.write_text('{"model_type": "custom"}')
    return Options(config=config)


def test_force_never_destroys_a_source_inside_the_destination(src, tmp_path):
    """The first user's report: convert proj/model.pt proj --to hf --force deleted the source; converting
    d/pytorch_model.bin into d deleted the .bin, the tokenizer and the config."""
    path, _ = src
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "model.pt").write_bytes(path.read_bytes())
    (proj / "tokenizer.json").write_text("{}")
    before = _tree(tmp_path)
    for s, d in ((proj / "model.pt", proj), (proj / "model.pt", tmp_path), (proj, proj / "out")):
        with pytest.raises(OverlapError):
            modelport.convert(s, d, to="hf", force=True, options=_hf_options(tmp_path))
        assert _tree(tmp_path) == before


def test_directory_outputs_carry_the_marker_and_force_replaces_them(src, tmp_path):
    path, _ = src
    dst = tmp_path / "out"
    modelport.convert(path, dst, to="hf", options=_hf_options(tmp_path))
    assert (dst / MARKER).is_file()
    modelport.convert(path, dst, to="hf", force=True, options=_hf_options(tmp_path))
    with modelport.open(dst) as again:
        assert MARKER not in again.side_files     # never carried on as one of the model's files


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_midway_leaves_no_output(src, tmp_path, monkeypatch, exc):
    path, _ = src
    calls = []

    def failing(source, name, fd):
        calls.append(name)
        if len(calls) == 2:
            raise exc
        return real(source, name, fd)

    real = st_adapter.write_tensor
    monkeypatch.setattr(st_adapter, "write_tensor", failing)
    with pytest.raises(type(exc)):
        modelport.convert(path, tmp_path / "out.safetensors")
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_unreadable_source_names_the_file(tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(FormatError, match="Git LFS pointer") as err:
        modelport.convert(bad, tmp_path / "out.safetensors")
    assert str(bad) in str(err.value)
    with pytest.raises(FormatError, match="no such file"):
        modelport.convert(tmp_path / "missing.pt", tmp_path / "out.safetensors")


def test_options_are_read_never_changed(tmp_path):
    """One Options serves two conversions: a shard size given to the first does not stick to it."""
    import copy
    import json

    from modelport.formats.base import Options

    g = torch.Generator().manual_seed(4)
    save_file({"transformer.wte.weight": torch.randn(37, 24, generator=g),
               "transformer.wpe.weight": torch.randn(16, 24, generator=g)}, tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 0, "n_head": 4, "n_embd": 24,
                                                      "vocab_size": 37, "n_positions": 16}))
    options = Options(config=tmp_path / "config.json")
    before = copy.deepcopy(options)
    modelport.convert(tmp_path / "w.safetensors", tmp_path / "a", to="hf", shard_size=4000, options=options)
    assert options == before
    assert (tmp_path / "a" / "model.safetensors.index.json").is_file()
    modelport.convert(tmp_path / "w.safetensors", tmp_path / "b", to="hf", options=options)
    assert options == before
    assert (tmp_path / "b" / "model.safetensors").is_file()
    assert not (tmp_path / "b" / "model.safetensors.index.json").exists()
