"""The t7 writer: byte-identical to what Lua Torch7 writes, exact ASCII numbers, shared objects once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelport.errors import UnsupportedError
from modelport.t7.objects import LuaObject, LuaTable, T7Storage, T7Tensor
from modelport.t7.reader import read_t7
from modelport.t7.writer import dumps, write_t7

from .truth import FIXTURES, fixture_files

# Files whose content is representable: all but the old ASCII files printed with %g (6 digits),
# the 2011 object stream (only its first object is read) and the legacy file Torch cannot read.
NOT_REPRESENTABLE = {
    "e-lab-torch7-demos/face-detector-elab/model.net",
    "torch-demos/history/face-detector/face.net@39d9878_2011-07-13.ascii-stream",
    "torch-demos/history/face-detector/face.net@1df6894_2011-09-07.ascii",
}
GOLDEN = [p for p in fixture_files() if str(p.relative_to(FIXTURES)) not in NOT_REPRESENTABLE]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_rewriting_a_lua_written_file_gives_the_same_bytes(tmp_path, path):
    got = read_t7(path)
    out = tmp_path / "again.t7"
    write_t7(got.root, out, mode="binary" if got.binary else "ascii")
    assert out.read_bytes() == path.read_bytes()


def test_golden_files_cover_both_modes_cuda_functions_tds_and_sharing():
    names = {str(p.relative_to(FIXTURES)) for p in GOLDEN}
    assert {"compress/input.asc", "compress/model.t7", "DeepLearning_HW1/model.t7", "AS_Exam/model.t7",
            "python-torchfile/testfiles_x86_64/tds_hash.t7", "python-torchfile/testfiles_x86_64/tds_vec.t7",
            "python-torchfile/testfiles_x86_64/recursive_kv_table.t7"} <= names


def test_old_percent_g_ascii_is_rewritten_at_full_precision(tmp_path):
    path = FIXTURES / "e-lab-torch7-demos/face-detector-elab/model.net"
    first = read_t7(path)
    out = tmp_path / "again.net"
    write_t7(first.root, out, mode="ascii")
    again = read_t7(out)
    a = first.root.fields["modules"][1.0].fields["modules"][1.0].fields["weight"]
    b = again.root.fields["modules"][1.0].fields["modules"][1.0].fields["weight"]
    assert a.numpy().tobytes() == b.numpy().tobytes() and b.storage.size == 25602


def test_ascii_example_of_the_format_notes_byte_for_byte():
    st = T7Storage("torch.FloatStorage", "float32",
                   np.array([-1.5, 0, 1 / 3, 3.4028235e38, 1.4e-45, -0.0], dtype=np.float32))
    t = T7Tensor("torch.FloatTensor", "float32", (2, 3), (3, 1), 0, st)
    assert dumps(t, mode="ascii") == (
        b"4\n1\n3\nV 1\n17\ntorch.FloatTensor\n2\n2 3\n3 1\n1\n4\n2\n3\nV 1\n18\ntorch.FloatStorage\n6\n"
        b"-1.5 0 0.333333343 3.40282347e+38 1.40129846e-45 -0\n")
    empty = T7Tensor("torch.FloatTensor", "float32", (), (), 0, None)
    assert dumps(empty, mode="ascii") == b"4\n1\n3\nV 1\n17\ntorch.FloatTensor\n0\n1\n0\n"


@pytest.mark.parametrize("mode", ["binary", "ascii"])
def test_values_survive_exactly(tmp_path, mode):
    g = np.random.default_rng(7)
    doubles = np.concatenate([g.standard_normal(50) * 10.0 ** g.integers(-300, 300, 50),
                              [math.inf, -math.inf, math.nan, -0.0, 5e-324, 1.7976931348623157e308]])
    floats = np.concatenate([g.standard_normal(40).astype(np.float32), np.array([1.4e-45, 3.4028235e38, -0.0], np.float32)])
    halves = np.array([65504, 6e-8, -0.0, 0.1, 1 / 3], dtype=np.float16)
    table = LuaTable()
    for key, dtype, cls, arr in [(b"d", "float64", "Double", doubles), (b"f", "float32", "Float", floats),
                                 (b"h", "float16", "Half", halves)]:
        st = T7Storage(f"torch.{cls}Storage", dtype, arr)
        table[key] = T7Tensor(f"torch.{cls}Tensor", dtype, (len(arr),), (1,), 0, st)
    table[b"n"] = 0.1 + 0.2
    p = tmp_path / "v.t7"
    write_t7(table, p, mode=mode)
    got = read_t7(p).root
    for key, arr in [(b"d", doubles), (b"f", floats), (b"h", halves)]:
        back = got[key].numpy()
        nan = np.isnan(arr)
        assert np.isnan(back[nan]).all()
        assert back[~nan].tobytes() == arr[~nan].tobytes()
    assert got[b"n"] == 0.1 + 0.2


def test_shared_storage_is_written_once_and_indices_are_pre_order():
    st = T7Storage("torch.FloatStorage", "float32", np.arange(10, dtype=np.float32))
    w = T7Tensor("torch.FloatTensor", "float32", (2, 3), (3, 1), 0, st)
    b = T7Tensor("torch.FloatTensor", "float32", (4,), (1,), 6, st)
    lin = LuaObject("nn.Linear", LuaTable({b"weight": w, b"bias": b}), 1)
    root = LuaTable({b"a": lin, b"b": lin, b"w": w})
    data = dumps(root)
    assert data.count(b"torch.FloatStorage") == 1 and data.count(b"nn.Linear") == 1
    # Indices: root table 1, nn.Linear 2, its field table 3, weight 4, storage 5, bias 6.
    assert data.startswith(b"\x03\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00")
    back = dumps(read_t7_bytes(data))
    assert back == data


def read_t7_bytes(data: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".t7") as f:
        f.write(data)
        f.flush()
        got = read_t7(f.name).root
    return got


def test_back_references_keep_sharing_and_cycles():
    st = T7Storage("torch.DoubleStorage", "float64", np.arange(6.0))
    t = LuaTable()
    t[b"x"] = T7Tensor("torch.DoubleTensor", "float64", (6,), (1,), 0, st)
    t[b"y"] = T7Tensor("torch.DoubleTensor", "float64", (3,), (2,), 1, st)
    t[b"me"] = t
    got = read_t7_bytes(dumps(t))
    assert got[b"x"].storage is got[b"y"].storage and got[b"me"] is got
    assert list(got[b"y"].numpy()) == [1.0, 3.0, 5.0]


def test_four_byte_longs_truncate_long_data_as_torch_does():
    st = T7Storage("torch.LongStorage", "int64", np.array([-2 ** 63, -2 ** 32, -1, 0, 2 ** 53 + 2, 2 ** 62]))
    data = dumps(st, long_size=4)
    assert len(data) == 12 + 3 + 4 + 17 + 4 + 6 * 4
    assert list(np.frombuffer(data[-24:], "<i4")) == [0, 0, -1, 0, 2, 0]


def test_unwritable_values_are_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="object cannot be written"):
        dumps(LuaTable({b"x": object()}))
    with pytest.raises(UnsupportedError, match="mode"):
        write_t7(LuaTable(), tmp_path / "x.t7", mode="text")
