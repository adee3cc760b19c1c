"""The pt adapter: torch.save files read without torch, written for torch.load(weights_only=True)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import modelport.formats as formats
from modelport.errors import FormatError, UnsafeContentError
from modelport.formats._stream import Sink
from modelport.formats._torchzip import ZipReader, ZipWriter
from modelport.formats.base import Options

PT = formats.get("pt")
ST = formats.get("safetensors")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tensor(dtype, shape, g):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        flat = t.view(-1)
        if flat.numel() >= 4:   # values whose bits a careless copy would change
            flat[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -float("inf")], dtype=dtype)
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _bits(t: torch.Tensor) -> bytes:
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes()


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert _bits(a) == _bits(b)


def _write(source, dst: Path, **opts) -> Path:
    PT.write(source, dst, Options(**opts))
    return dst


def _mixed(g) -> dict:
    """One tensor of every dtype, pairwise-distinct shapes, plus a scalar and empty tensors."""
    sd = {f"t_{str(dt).removeprefix('torch.')}": _tensor(dt, (3 + i, 5 + 2 * i), g) for i, dt in enumerate(DTYPES)}
    sd["scalar_f32"] = torch.tensor(2.5)
    sd["scalar_i64"] = torch.tensor(-7)
    sd["scalar_bf16"] = torch.tensor(1.25, dtype=torch.bfloat16)
    sd["empty"] = torch.empty(0, 4)
    sd["empty_i32"] = torch.empty(3, 0, dtype=torch.int32)
    return sd


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_every_dtype_bit_exact(tmp_path, legacy):
    sd = _mixed(_gen(1))
    path = tmp_path / "m.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    assert formats.detect(path).id == "pt"
    with formats.open(path) as src:
        assert src.names() == list(sd)
        for name, t in sd.items():
            info = src.info(name)
            assert info.shape == tuple(t.shape) and info.dtype == str(t.dtype).removeprefix("torch.")
            assert bytes(src.read_bytes(name)) == _bits(t)
            _same(src.read(name), t)
            span = src.span(name)
            assert span is not None
            with open(path, "rb") as f:
                f.seek(span.offset)
                assert f.read(span.nbytes) == _bits(t)


@pytest.mark.parametrize("mmap", [False, True])
def test_write_loads_in_torch_bit_exact(tmp_path, mmap):
    sd = _mixed(_gen(2))
    src_path = tmp_path / "src.pt"
    torch.save(sd, src_path)
    with formats.open(src_path) as src:
        out = _write(src, tmp_path / "out.pt")
    back = torch.load(out, weights_only=True, mmap=mmap)
    assert list(back) == list(sd)
    for name, t in sd.items():
        _same(back[name], t)


def test_written_layout_mirrors_torch_save(tmp_path):
    sd = {"w": torch.arange(10, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int8)}
    torch.save(sd, tmp_path / "ref.pt")
    with formats.open(tmp_path / "ref.pt") as src:
        out = _write(src, tmp_path / "out.pt")
    ref_names = [n.split("/", 1)[1] for n in zipfile.ZipFile(tmp_path / "ref.pt").namelist()]
    with zipfile.ZipFile(out) as zf:
        names = [n.split("/", 1)[1] for n in zf.namelist()]
        assert names == ref_names
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.testzip() is None                              # real CRC-32s by default
    zr = ZipReader(out, out.stat().st_size)
    assert zr.read("archive/.format_version") == b"1" and zr.read("archive/.storage_alignment") == b"64"
    assert zr.read("archive/byteorder") == b"little" and zr.read("archive/version") == b"3\n"
    assert len(zr.read("archive/.data/serialization_id")) == 40
    with formats.open(out) as back:
        for name in back.names():
            assert back.span(name).offset % 64 == 0


@pytest.mark.parametrize("crc32", [True, False])
def test_crc32_on_by_default_and_optional(tmp_path, crc32):
    sd = {"w": _tensor(torch.float32, (7, 3), _gen(3)), "i": torch.arange(5)}
    torch.save(sd, tmp_path / "ref.pt")
    with formats.open(tmp_path / "ref.pt") as src:
        out = _write(src, tmp_path / "out.pt", crc32=crc32)
    with zipfile.ZipFile(out) as zf:
        if crc32:
            assert zf.testzip() is None
            assert all(i.CRC != 0 for i in zf.infolist() if i.file_size)
            crcs = {i.filename: i.CRC for i in zf.infolist()}
            with zipfile.ZipFile(tmp_path / "ref.pt") as ref:   # the same CRCs torch.save writes
                assert all(crcs[i.filename.replace("ref/", "archive/")] == i.CRC for i in ref.infolist()
                           if "data/" in i.filename and not i.filename.endswith("serialization_id"))
        else:
            assert all(i.CRC == 0 for i in zf.infolist())
            with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):   # the documented cost of --no-crc32
                zf.read("archive/version")
    for mmap in (False, True):
        for name, t in torch.load(out, weights_only=True, mmap=mmap).items():
            _same(t, sd[name])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_non_contiguous_and_shared_views(tmp_path, legacy):
    g = _gen(4)
    base = _tensor(torch.float32, (6, 10), g)
    half = _tensor(torch.bfloat16, (5, 7), g)
    sd = {"base": base, "t": base.t(), "rows": base[2:5], "cols": base[:, 3:8:2], "half_t": half.t(), "i": torch.arange(24).reshape(2, 3, 4).permute(2, 0, 1)}
    path = tmp_path / "v.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    with formats.open(path) as src:
        assert src.aliases() == {}
        for name, t in sd.items():
            assert bytes(src.read_bytes(name)) == _bits(t), name
        assert src.span("t") is None and src.span("cols") is None and src.span("rows") is not None
        assert src.storage_view("t").key == src.storage_view("base").key
        out = _write(src, tmp_path / "out.pt")
    back = torch.load(out, weights_only=True)
    for name, t in sd.items():
        _same(back[name], t)
        assert back[name].stride() == t.stride(), name       # views stay views
    ptr = back["base"].untyped_storage().data_ptr()
    assert all(back[n].untyped_storage().data_ptr() == ptr for n in ("t", "rows", "cols"))
    with zipfile.ZipFile(out) as zf:   # three storages: base, half, i
        assert sum(1 for n in zf.namelist() if "/data/" in n) == 3


def test_tied_weights_are_aliases_and_survive_safetensors(tmp_path):
    g = _gen(5)
    wte = _tensor(torch.float32, (37, 24), g)
    sd = {"transformer.wte.weight": wte, "transformer.h.0.w": _tensor(torch.float32, (24, 40), g), "lm_head.weight": wte}
    torch.save(sd, tmp_path / "gpt.pt")
    with formats.open(tmp_path / "gpt.pt") as src:
        assert src.aliases() == {"lm_head.weight": "transformer.wte.weight"}
        assert src.names() == ["transformer.wte.weight", "transformer.h.0.w"]
        ST.write(src, tmp_path / "gpt.safetensors", Options())
        _write(src, tmp_path / "direct.pt")
    with formats.open(tmp_path / "gpt.safetensors") as st:
        assert st.aliases() == {"lm_head.weight": "transformer.wte.weight"}
        _write(st, tmp_path / "back.pt")
    for name in ("direct.pt", "back.pt"):
        back = torch.load(tmp_path / name, weights_only=True)
        assert set(back) == set(sd)
        for k, t in sd.items():
            _same(back[k], t)
        assert back["lm_head.weight"].data_ptr() == back["transformer.wte.weight"].data_ptr()
        with zipfile.ZipFile(tmp_path / name) as zf:
            assert sum(1 for n in zf.namelist() if "/data/" in n) == 2   # the tied weight is stored once


def test_safetensors_to_pt_round_trip(tmp_path):
    sd = _mixed(_gen(6))
    with formats.open(_save(sd, tmp_path / "a.pt")) as src:
        ST.write(src, tmp_path / "a.safetensors", Options())
    with formats.open(tmp_path / "a.safetensors") as st:
        _write(st, tmp_path / "b.pt")
    back = torch.load(tmp_path / "b.pt", weights_only=True, mmap=True)
    for k, t in sd.items():
        _same(back[k], t)


def _save(obj, path: Path, **kw) -> Path:
    torch.save(obj, path, **kw)
    return path


def test_wrappers_nested_and_metadata(tmp_path):
    g = _gen(7)
    inner = {"module.enc.w": _tensor(torch.float32, (3, 4), g), "module.dec.b": _tensor(torch.float16, (5,), g), "head": torch.arange(6)}
    ckpt = {"epoch": 12, "arch": "tiny", "state_dict": inner, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "lr": 0.1}}
    path = _save(ckpt, tmp_path / "ckpt.pth")
    with formats.open(path) as src:
        assert src.names() == list(inner)
        assert src.metadata["epoch"] == "12" and src.metadata["arch"] == '"tiny"' and src.metadata["optimizer.lr"] == "0.1"
        assert any("state_dict" in n for n in src.notes) and any("ignored 1 tensors" in n for n in src.notes)
    with formats.open(path, options=Options(strip_prefix="module.")) as src:
        assert src.names() == ["enc.w", "dec.b", "head"]
        _same(src.read("enc.w"), inner["module.enc.w"])
    nested = {"model": {"enc": {"w": inner["head"], "layers": [torch.ones(2), torch.zeros(3)]}, "step": 4}}
    with formats.open(_save(nested, tmp_path / "n.pt")) as src:
        assert src.names() == ["enc.w", "enc.layers.0", "enc.layers.1"]
        assert src.metadata == {"step": "4"}


def test_parameters_and_ordered_dict_state_dict(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5))
    sd = model.state_dict()
    with formats.open(_save(sd, tmp_path / "m.pt")) as src:
        assert src.names() == list(sd)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in sd.items()}
    with formats.open(_save(params, tmp_path / "p.pt")) as src:
        for k, v in sd.items():
            _same(src.read(k), v)


def _rewrite_zip(src: Path, dst: Path, change) -> Path:
    """Copy a zip member by member; ``change(name, data)`` returns new data or None to drop it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def test_big_endian_byteorder(tmp_path):
    g = _gen(8)
    base = _tensor(torch.float32, (4, 6), g)
    sd = {"f32": base, "f32_t": base.t(), "bf16": _tensor(torch.bfloat16, (3, 5), g), "i64": _tensor(torch.int64, (7,), g), "u8": _tensor(torch.uint8, (9,), g)}
    little = _save(sd, tmp_path / "little.pt")
    with formats.open(little) as src:
        sizes = {src.storage_view(n).key: src.info(n).dtype for n in src.names()}

    def swap(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            dt = np.dtype({"float32": "<f4", "bfloat16": "<u2", "int64": "<i8", "uint8": "u1"}[sizes[name.rsplit("/", 1)[1]]])
            return np.frombuffer(data, dtype=dt).byteswap().tobytes()
        return data

    big = _rewrite_zip(little, tmp_path / "big.pt", swap)
    loaded = torch.load(big, weights_only=True)        # torch agrees on what the file holds
    with formats.open(big) as src:
        for name, t in sd.items():
            _same(loaded[name], t)
            assert bytes(src.read_bytes(name)) == _bits(t), name
            assert src.span(name) is None
        out = _write(src, tmp_path / "out.pt")
    for name, t in torch.load(out, weights_only=True).items():
        _same(t, sd[name])


class _Evil:
    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("how", ["system", "eval"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, how, legacy):
    marker = tmp_path / "pwned"
    path = _save({"w": torch.ones(2), "x": _Evil(marker, how)}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    with pytest.raises(UnsafeContentError) as err:
        formats.open(path)
    msg = str(err.value)
    assert str(path) in msg and "refusing to import" in msg and "\n" not in msg
    assert ("posix.system" in msg or "os.system" in msg) if how == "system" else "builtins.eval" in msg
    assert err.value.exit_code == 2
    assert not marker.exists()


def test_plain_malicious_pickle_named_pt(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Evil(marker, "system"), protocol=2))
    with pytest.raises(FormatError, match="pickle that is not a PyTorch checkpoint"):
        formats.open(path)
    with pytest.raises(UnsafeContentError, match="refusing to import"):
        formats.open(path, format="pt")
    assert not marker.exists()


def test_truncated_zip(tmp_path):
    path = _save({"w": _tensor(torch.float32, (64, 32), _gen(9))}, tmp_path / "w.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert formats.detect(cut).id == "pt"
    with pytest.raises(FormatError, match=r"cut\.pt: truncated or corrupt zip archive"):
        formats.open(cut)


def test_missing_storage_member(tmp_path):
    path = _save({"w": torch.ones(3), "v": torch.zeros(4)}, tmp_path / "w.pt")
    bad = _rewrite_zip(path, tmp_path / "bad.pt", lambda n, d: None if n.endswith("/data/1") else d)
    with pytest.raises(FormatError, match=r"bad\.pt: tensor 'v': its storage '1' has no member .*/data/1; the archive is incomplete"):
        formats.open(bad)


def test_storage_too_small_for_view(tmp_path):
    path = _save({"small": torch.ones(3), "w": torch.arange(12.0).reshape(3, 4)}, tmp_path / "w.pt")
    bad = _rewrite_zip(path, tmp_path / "bad.pt", lambda n, d: d[:20] if n.endswith("/data/1") else d)
    with pytest.raises(FormatError, match=r"bad\.pt: tensor 'w' \(shape \[3, 4\].*has 5 float32 elements"):
        formats.open(bad)


def test_truncated_legacy(tmp_path):
    path = _save({"w": torch.arange(100.0)}, tmp_path / "w.pt", _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(FormatError, match=r"cut\.pt: tensor 'w': its storage .* ends past the end of the file"):
        formats.open(cut)
    cut.write_bytes(path.read_bytes()[:60])
    with pytest.raises(FormatError, match=r"cut\.pt: corrupt"):
        formats.open(cut, format="pt")


def test_not_a_checkpoint(tmp_path):
    z = tmp_path / "notes.pt"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatError, match="zip archive that is not a PyTorch checkpoint"):
        formats.open(z)
    with pytest.raises(FormatError, match=r"notes\.pt: a zip archive without <name>/data.pkl \(it holds readme.txt\)"):
        formats.open(z, format="pt")
    p = tmp_path / "plain.pt"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FormatError, match=r"plain\.pt: a Python pickle without torch's magic number"):
        formats.open(p, format="pt")
    lst = _save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(FormatError, match=r"list\.pt: holds a list, not a state dict"):
        formats.open(lst)


def test_reading_and_copying_do_not_import_torch(tmp_path):
    path = _save(_mixed(_gen(10)), tmp_path / "m.pt")
    code = (
        "import sys, modelport.formats as F\n"
        f"s = F.open({str(path)!r})\n"
        f"F.get('safetensors').write(s, {str(tmp_path / 'm.safetensors')!r}, F.Options())\n"
        f"F.get('pt').write(F.open({str(tmp_path / 'm.safetensors')!r}), {str(tmp_path / 'n.pt')!r}, F.Options())\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
    back = torch.load(tmp_path / "n.pt", weights_only=True)
    for k, t in _mixed(_gen(10)).items():
        _same(back[k], t)


def test_zip64_end_records_are_read(tmp_path):
    """Past 65535 members the writer switches to zip64 end records; zipfile and modelport read them."""
    path = tmp_path / "many.zip"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    zw = ZipWriter(Sink(fd), "archive", crc32=True)
    for i in range(0xFFFF + 2):
        zw.add(f"m{i}", struct.pack("<I", i))
    zw.close()
    os.close(fd)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.infolist()) == 0xFFFF + 2 and zf.read("archive/m65536") == struct.pack("<I", 65536)
    zr = ZipReader(path, path.stat().st_size)
    assert zr.read("archive/m65536") == struct.pack("<I", 65536)


ROOT = Path(__file__).resolve().parents[2]


def test_real_gpt2_checkpoint_from_transformers(tmp_path):
    path = ROOT / "examples" / "tiny-gpt2.pt"
    ref = torch.load(path, weights_only=True)
    with formats.open(path) as src:
        assert src.aliases() == {"lm_head.weight": "transformer.wte.weight"}
        assert sorted(src.names() + list(src.aliases())) == sorted(ref)
        for name in src.names():
            _same(src.read(name), ref[name])
        out = _write(src, tmp_path / "out.pt")
    assert out.read_bytes() == (ROOT / "fixtures" / "pt" / "tiny-gpt2.modelport.pt").read_bytes()   # golden bytes
    back = torch.load(out, weights_only=True, mmap=True)
    assert set(back) == set(ref)
    for name, t in ref.items():
        _same(back[name], t)
    model = __import__("fixtures.generate", fromlist=["tiny_gpt2"]).tiny_gpt2()
    model.load_state_dict(back)    # strict: every name the model expects, nothing else


def test_legacy_fixture_file():
    path = ROOT / "fixtures" / "pt" / "tiny-legacy.pt"
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    with formats.open(path) as src:
        assert src.names() == ["w", "w_t", "h", "flag"] and src.aliases() == {"tied": "w"}
        _same(src.read("w_t"), w.t().contiguous())
        _same(src.read("h"), torch.tensor([1.5, -2.0], dtype=torch.float16))
        _same(src.read("flag"), torch.tensor(True))


def test_legacy_with_newer_pickle_protocol(tmp_path):
    sd = {"a": torch.arange(5, dtype=torch.int16), "b": torch.ones(2, 3, dtype=torch.float64)}
    path = _save(sd, tmp_path / "p4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    assert formats.detect(path).id == "pt"
    with formats.open(path) as src:
        for k, t in sd.items():
            _same(src.read(k), t)


def test_compressed_member_falls_back(tmp_path):
    sd = {"w": _tensor(torch.float32, (9, 4), _gen(11)), "v": torch.arange(7)}
    path = _save(sd, tmp_path / "w.pt")
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    with formats.open(packed) as src:
        assert src.span("w") is None
        for k, t in sd.items():
            _same(src.read(k), t)
        out = _write(src, tmp_path / "out.pt")
    for k, t in torch.load(out, weights_only=True).items():
        _same(t, sd[k])


def test_name_collisions_are_errors(tmp_path):
    path = _save({"a": {"b": torch.ones(1)}, "a.b": torch.zeros(1)}, tmp_path / "c.pt")
    with pytest.raises(FormatError, match=r"c\.pt: two tensors are both named 'a.b'"):
        formats.open(path)
    path = _save({"module.x": torch.ones(1), "x": torch.zeros(1)}, tmp_path / "d.pt")
    with pytest.raises(FormatError, match=r"d\.pt: stripping 'module.' makes 'x' collide"):
        formats.open(path, options=Options(strip_prefix="module."))


def test_cli_refuses_malicious_and_corrupt_files(tmp_path):
    marker = tmp_path / "pwned"
    evil = _save({"w": torch.ones(2), "x": _Evil(marker, "system")}, tmp_path / "evil.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(_save({"w": torch.ones(300)}, tmp_path / "w.pt").read_bytes()[:700])
    for src, expect in ((evil, "refusing to import posix.system from"), (cut, "truncated or corrupt zip archive")):
        for args in (["inspect", str(src)], ["convert", str(src), str(tmp_path / "out.safetensors")]):
            result = subprocess.run([sys.executable, "-m", "modelport", *args], capture_output=True, text=True, cwd=ROOT)
            assert result.returncode == 2, result.stderr
            assert expect in result.stderr and str(src) in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pt", "evil.pt", "w.pt"]   # nothing written


def test_self_referencing_structure(tmp_path):
    loop: list = [torch.ones(1)]
    loop.append(loop)
    path = _save({"x": loop}, tmp_path / "loop.pt")
    with pytest.raises(FormatError, match=r"loop\.pt: the checkpoint's object tree is nested too deeply or contains itself"):
        formats.open(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_corrupted_bytes_give_one_line_errors(tmp_path, legacy):
    """Flipped, cut and deleted bytes: the file reads, or fails as a ModelportError of one line; nothing else."""
    import random

    from modelport.errors import ModelportError

    w = _tensor(torch.float32, (4, 6), _gen(12))
    data = _save({"w": w, "t": w.t(), "h": torch.arange(5, dtype=torch.float16), "s": torch.tensor(3)},
                 tmp_path / "src.pt", _use_new_zipfile_serialization=not legacy).read_bytes()
    rng = random.Random(13)
    bad = tmp_path / "bad.pt"
    for _ in range(300):
        b = bytearray(data)
        mode = rng.random()
        if mode < 0.4:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif mode < 0.7:
            del b[rng.randrange(len(b)):]
        else:
            p = rng.randrange(len(b))
            del b[p:p + rng.randint(1, 20)]
        bad.write_bytes(b)
        try:
            with formats.open(bad, format="pt") as src:
                for name in src.names():
                    src.read_bytes(name)
        except ModelportError as exc:
            assert "\n" not in str(exc) and str(bad) in str(exc)


def test_torch_can_compute_storage_offsets_of_written_files(tmp_path, monkeypatch):
    """torch may compute storage offsets from miniz's layout instead of reading each header
    (config.load.calculate_storage_offsets); written files follow that layout exactly."""
    import torch.utils.serialization.config as config

    sd = _mixed(_gen(14))
    sd["view"] = sd["t_float32"][1:, ::2]
    with formats.open(_save(sd, tmp_path / "src.pt")) as src:
        out = _write(src, tmp_path / "out.pt")
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")     # torch checks each computed offset against the header
    before = config.load.calculate_storage_offsets   # torch's config class: monkeypatch would delete it on undo
    config.load.calculate_storage_offsets = True
    try:
        back = torch.load(out, weights_only=True, mmap=True)
    finally:
        config.load.calculate_storage_offsets = before
    for name, t in sd.items():
        _same(back[name], t)


def test_big_endian_legacy(tmp_path):
    """A legacy file whose system info says big-endian: counts and elements are swapped on read."""
    sd = {"f": _tensor(torch.float32, (3, 4), _gen(15)), "i": torch.arange(6, dtype=torch.int64), "h": torch.tensor([0.5, 3.0], dtype=torch.float16)}
    data = _save(sd, tmp_path / "little.pt", _use_new_zipfile_serialization=False).read_bytes()
    from modelport.formats._pickle import CheckpointUnpickler

    f = io.BytesIO(data)
    starts = []
    for _ in range(5):          # magic, protocol, system info, objects, storage keys
        starts.append(f.tell())
        value = CheckpointUnpickler(f, tmp_path / "little.pt").load()
    keys, pos = value, f.tell()
    info = pickle.loads(data[starts[2]:starts[3]])
    out = data[:starts[2]] + pickle.dumps(dict(info, little_endian=False), protocol=2) + data[starts[3]:pos]
    with formats.open(tmp_path / "little.pt") as src:
        dtype_of = {src.storage_view(n).key: src.info(n).dtype for n in src.names()}
    np_dt = {"float32": "<f4", "int64": "<i8", "float16": "<f2"}
    for key in keys:
        (count,) = struct.unpack("<q", data[pos:pos + 8])
        nbytes = count * np.dtype(np_dt[dtype_of[key]]).itemsize
        out += struct.pack(">q", count) + np.frombuffer(data[pos + 8:pos + 8 + nbytes], dtype=np_dt[dtype_of[key]]).byteswap().tobytes()
        pos += 8 + nbytes
    big = tmp_path / "big.pt"
    big.write_bytes(out)
    with formats.open(big) as src:
        for name, t in sd.items():
            assert src.span(name) is None
            _same(src.read(name), t)
