"""The t7 format adapter: recognising files, dotted names, storage views, the object tree, writing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import modelport
from modelport import formats
from modelport.errors import UnsupportedError
from modelport.formats.base import Options
from modelport.formats.t7 import T7Source, looks_like_t7, table_of_tensors
from modelport.t7.objects import LuaTable, T7Tensor
from modelport.t7.reader import read_t7
from tests.t7.truth import FIXTURES, fixture_files

HW1 = FIXTURES / "DeepLearning_HW1/model.t7"           # nn.Sequential saved on a GPU, getParameters()
GMODULE = FIXTURES / "python-torchfile/testfiles_x86_64/gmodule_with_linear_identity.t7"
FACE = FIXTURES / "e-lab-torch7-demos/face-detector-elab/model.net"   # ASCII, one flat parameter storage


def _open(path, **kw) -> T7Source:
    return formats.open(path, "t7", Options(**kw))


# -- recognising the format --------------------------------------------------------------

@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_lua_written_file_is_recognised_by_content(path, tmp_path):
    copy = tmp_path / "no_suffix"
    copy.write_bytes(path.read_bytes())
    assert formats.detect(copy).id == "t7"


def test_other_formats_are_not_claimed(tmp_path):
    t = {"w": torch.arange(6, dtype=torch.float32)}
    torch.save(t, tmp_path / "zip.t7")
    torch.save(t, tmp_path / "legacy.t7", _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(t, tmp_path / "a.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    (tmp_path / "lfs.t7").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    (tmp_path / "config.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "text.t7").write_text("hello\n")
    (tmp_path / "empty.t7").write_bytes(b"")
    fmt = formats.get("t7")
    for p in tmp_path.iterdir():
        assert not fmt.sniff(p), p.name
    assert formats.detect(tmp_path / "a.safetensors").id == "safetensors"
    assert formats.detect(tmp_path / "tiny.safetensors").id == "safetensors"


def test_sniffing_small_hand_made_files():
    assert looks_like_t7(struct.pack("<i", 0), 4)                               # nil
    assert looks_like_t7(struct.pack("<id", 1, 2.5), 12)                        # a number
    assert looks_like_t7(struct.pack("<iii", 3, 1, 0), 12)                      # an empty table
    assert looks_like_t7(struct.pack(">iii", 3, 1, 0), 12)                      # big-endian
    assert looks_like_t7(b"3\n1\n0\n", 6) and looks_like_t7(b"4\n1\n3\nV 1\n", 40)
    assert not looks_like_t7(struct.pack("<iii", 3, 0, 0), 12)                  # index 0 never written
    assert not looks_like_t7(b"42\n", 3) and not looks_like_t7(b"3\nhello", 7)


def test_suffixes():
    for name in ("m.t7", "m.net", "m.th", "input.asc"):
        assert formats.for_suffix(name).id == "t7"


# -- names, values, sharing ----------------------------------------------------------------

def test_nn_children_get_pytorch_indices_and_buffers_are_included():
    src = _open(HW1)
    names = src.names()
    assert names[:3] == ["0.output", "0.gradInput", "0.size"]          # nn.View's LongStorage `size`
    assert {"1.weight", "1.bias", "1.gradWeight", "1.addBuffer", "5.bias", "6.output"} <= set(names)
    assert not any("modules" in n for n in names)
    assert src.info("1.weight").shape == (64, 784) and src.info("1.weight").dtype == "float32"
    assert src.info("0.size").shape == (1,) and src.info("0.size").dtype == "int64"


def test_values_and_storage_views_follow_the_lua_file():
    src = _open(HW1)
    truth = json.loads((HW1.parent / (HW1.name + ".lua-truth.json")).read_text())
    linear = truth["root"]["entries"]
    modules = next(v for k, v in linear if k.get("v") == "modules")
    lin = next(v for k, v in modules["entries"] if k["v"] == 2)          # Lua index 2 -> child 1
    bias = next(v for k, v in lin["entries"] if k.get("v") == "bias")
    got = src.read("1.bias")
    assert got.shape == (64,) and float(got.double().sum()) == pytest.approx(bias["sum"], rel=1e-12)
    assert [float(x) for x in got[:5]] == [float(np.float32(x)) for x in bias["first5"]]
    w, b = src.storage_view("1.weight"), src.storage_view("1.bias")
    assert w.key == b.key and (w.offset, b.offset, w.numel, b.stride) == (0, 50176, 59850, (1,))
    whole = np.frombuffer(src.read_storage_bytes(w.key), dtype=np.float32)
    np.testing.assert_array_equal(whole[50176:50176 + 64], got.numpy())
    span = src.span("1.bias")
    with open(span.path, "rb") as f:
        f.seek(span.offset)
        assert f.read(span.nbytes) == got.numpy().tobytes()


def test_params_only():
    src = _open(HW1, params_only=True)
    assert src.names() == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    face = _open(FACE, params_only=True)
    assert face.names() == ["0.0.bias", "0.0.weight", "0.3.bias", "0.3.weight", "1.1.bias", "1.1.weight"]
    assert face.info("0.3.weight").shape == (32, 784)       # SpatialConvolutionMM: 2-D as stored


def test_gmodule_modules_come_first():
    src = _open(GMODULE, params_only=True)
    assert src.names() == ["2.bias", "2.weight"]
    # python-torchfile's README: forwardnodes[6].data.module.weight == [[-0.0248373], [0.17503954]]
    np.testing.assert_allclose(src.read("2.weight").numpy(), [[-0.0248373], [0.17503954]], atol=1e-8)
    np.testing.assert_allclose(src.read("2.bias").numpy(), [0.05159848, -0.25367146], atol=1e-8)


def test_shared_tensors_are_aliases_only_when_the_views_are_identical():
    src = _open(FIXTURES / "AS_Exam/model.t7", params_only=True)
    aliases = src.aliases()
    assert len(aliases) > 50, "char-rnn clones share their parameters"
    tree = read_t7(FIXTURES / "AS_Exam/model.t7").root
    assert tree.class_name == "nn.gModule"
    for alias, kept in aliases.items():
        assert alias not in src.names() and kept in src.names()
        assert alias.rsplit(".", 1)[1] == kept.rsplit(".", 1)[1]          # weight ties weight, bias bias
    state = src.state_dict()
    for alias, kept in aliases.items():
        assert state[alias] is state[kept]
    # nn.Sequential's output IS its last module's output (one Lua tensor), its gradInput the first's;
    # the parameters are different views of one flat storage, so none of them is an alias.
    assert _open(HW1).aliases() == {"output": "6.output", "gradInput": "0.gradInput"}
    assert _open(HW1, params_only=True).aliases() == {}


def test_plain_tables_bare_storages_and_root_tensors(tmp_path):
    src = _open(FIXTURES / "compress/input.asc")
    assert src.names() == ["1", "2", "3", "4"] and src.read("2").shape == (5, 10)
    assert src.read("3").dtype == torch.float32            # torch.CudaTensor read as CPU float32
    root = _open(FIXTURES / "Element-Research-rnn/test/mnistsample.t7")
    assert root.names() == ["tensor"] and len(root.info("tensor").shape) == 4
    storage = tmp_path / "s.t7"
    from modelport.t7.objects import T7Storage
    from modelport.t7.writer import write_t7

    write_t7(T7Storage("torch.IntStorage", "int32", np.array([3, 1, 2], np.int32)), storage)
    s = _open(storage)
    assert s.names() == ["storage"] and s.read("storage").tolist() == [3, 1, 2]


def test_tree_shows_classes_shapes_and_sharing():
    tree = _open(HW1).tree()
    assert tree.startswith("nn.Sequential (V 1) #1")
    assert "1: nn.Linear (V 1)" in tree and "torch.CudaTensor" in tree and "[64, 784]" in tree
    assert "shared by 6 tensors" in tree
    gm = _open(FIXTURES / "AS_Exam/model.t7").tree()
    assert "nn.gModule" in gm and "(shared, shown above)" in gm


def test_notes_say_when_the_file_holds_more_than_one_object():
    src = _open(FIXTURES / "torch-demos/history/face-detector/face.net@39d9878_2011-07-13.ascii-stream")
    assert any("ignored, as torch.load does" in n for n in src.notes)


def test_reading_options_reach_the_reader(tmp_path):
    from modelport.t7.writer import write_t7

    p = tmp_path / "b32.t7"
    write_t7(read_t7(GMODULE).root, p, long_size=4)
    assert any("4-byte longs" in n for n in _open(p).notes)
    assert _open(p, t7_long_size=4).read("2.bias").tolist() == _open(GMODULE).read("2.bias").tolist()


# -- writing ---------------------------------------------------------------------------------

def test_convert_t7_to_safetensors_and_back_keeps_every_tensor(tmp_path):
    st = tmp_path / "hw1.safetensors"
    modelport.convert(HW1, st)
    back = tmp_path / "back.t7"
    modelport.convert(st, back)
    src, got = _open(HW1), _open(back)
    assert set(got.names()) | set(got.aliases()) == set(src.names()) | set(src.aliases())
    for name in src.names():
        assert torch.equal(got.read(name), src.read(name)), name
    root = read_t7(back).root
    assert isinstance(root, LuaTable) and isinstance(root[b"1.weight"], T7Tensor)
    assert root[b"1.weight"].class_name == "torch.FloatTensor"


def test_t7_to_t7_keeps_storage_sharing(tmp_path):
    out = tmp_path / "params.t7"
    modelport.convert(HW1, out, options=Options(params_only=True))
    root = read_t7(out).root
    assert root[b"1.weight"].storage is root[b"5.bias"].storage
    assert root[b"1.bias"].offset == 50176 and root[b"1.weight"].storage.size == 59850
    assert out.stat().st_size < 59850 * 4 + 2000          # the flat storage written once


@pytest.mark.parametrize("mode", ["binary", "ascii"])
def test_written_tables_round_trip_bit_for_bit(tmp_path, mode):
    g = torch.Generator().manual_seed(3)
    tensors = {
        "emb.weight": torch.randn(37, 24, generator=g),
        "h.0.w": torch.randn(24, 40, generator=g).double(),
        "h.0.b": torch.randn(40, generator=g).half(),
        "ids": torch.randint(-2 ** 62, 2 ** 62, (5,), generator=g),
        "i32": torch.randint(-2 ** 31, 2 ** 31 - 1, (3, 2), generator=g, dtype=torch.int32),
        "i16": torch.randint(-2 ** 15, 2 ** 15 - 1, (7,), generator=g, dtype=torch.int16),
        "i8": torch.randint(-128, 127, (11,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (2, 2, 3), generator=g, dtype=torch.uint8),
        "special": torch.tensor([float("inf"), float("-inf"), -0.0, 1e-45, 3.4028235e38]),
        "empty": torch.empty(0),
    }
    tensors["lm_head.weight"] = tensors["emb.weight"]
    from safetensors.torch import save_file

    src = tmp_path / "in.safetensors"
    plain = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    save_file(plain, src, metadata={"lm_head.weight": "emb.weight"})
    out = tmp_path / f"out.{mode}.t7"
    modelport.convert(src, out, options=Options(t7_mode=mode))
    assert read_t7(out).binary == (mode == "binary")
    got = _open(out)
    for name, t in tensors.items():
        back = got.read(got.aliases().get(name, name))
        assert back.dtype == t.dtype and back.shape == t.shape, name
        assert back.numpy().tobytes() == t.numpy().tobytes(), name
    root = read_t7(out).root
    assert root[b"lm_head.weight"] is root[b"emb.weight"]      # a tie stays one Lua tensor


def test_types_torch7_cannot_hold_are_refused_with_the_tensor_name(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "bf.safetensors"
    save_file({"w": torch.zeros(3, dtype=torch.bfloat16)}, src)
    with pytest.raises(UnsupportedError, match="'w'.*bfloat16.*--dtype"):
        modelport.convert(src, tmp_path / "out.t7")
    assert not (tmp_path / "out.t7").exists()


def test_scalars_become_one_element_tensors(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "s.safetensors"
    save_file({"s": torch.tensor(2.5)}, src)
    table = table_of_tensors(formats.open(src))
    assert table[b"s"].size == (1,)


# -- the command line --------------------------------------------------------------------------

def test_cli_inspect_shows_the_object_tree_and_convert_writes_ascii(cli, tmp_path):
    shown = cli("inspect", HW1)
    assert shown.returncode == 0, shown.stderr
    assert "object tree:" in shown.stdout and "1: nn.Linear (V 1)" in shown.stdout and "1.weight" in shown.stdout
    out = tmp_path / "p.asc"
    done = cli("convert", HW1, out, "--params-only", "--t7-mode", "ascii")
    assert done.returncode == 0, done.stderr
    got = read_t7(out)
    assert not got.binary and sorted(got.root) == sorted(n.encode() for n in _open(HW1, params_only=True).names())


def test_cli_refuses_what_is_not_lua_torch_with_exit_2(cli, tmp_path):
    lfs = tmp_path / "model.t7"
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    res = cli("inspect", lfs, "--from", "t7")
    assert res.returncode == 2 and "Git LFS pointer" in res.stderr and "byte 0" in res.stderr
    cut = tmp_path / "cut.t7"
    cut.write_bytes(HW1.read_bytes()[:5000])
    res = cli("inspect", cut)
    assert res.returncode == 2 and "at byte 210" in res.stderr and "truncated" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_inspect_shows_the_rebuilt_nn_module():
    from pathlib import Path

    import modelport

    fixtures = Path(__file__).resolve().parents[2] / "fixtures" / "t7nn"
    summary = modelport.inspect(fixtures / "u1net.net")
    assert "nn.SpatialConvolution -> Conv2d(3, 12, kernel_size=(9, 9)" in summary.model
    assert "total: 2,928 parameters" in summary.model
    gone = modelport.inspect(fixtures / "face-detector_2011.net")
    assert gone.model.startswith("cannot be rebuilt") and "nn.SpatialNormalization" in gone.model
