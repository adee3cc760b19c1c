"""The t7 reader against what real Lua Torch7 loads, on every kind of value, and on bad input."""

from __future__ import annotations

import math
import struct
import time
import tracemalloc

import numpy as np
import pytest

from modelport.errors import FormatError
from modelport.t7.objects import LuaFunction, LuaObject, LuaTable, T7Storage, T7Tensor
from modelport.t7.reader import read_t7
from modelport.t7.writer import dumps

from .truth import FIXTURES, TruthChecker, fixture_files, load_truth

LUA_READABLE = [p for p in fixture_files() if "error" not in load_truth(p)]


# -- real files against real Torch7 -----------------------------------------------------

@pytest.mark.parametrize("path", LUA_READABLE, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_reads_what_lua_torch_loads(path):
    truth = load_truth(path)
    got = read_t7(path)
    assert got.binary == (truth["mode"] == "binary")
    checker = TruthChecker()
    checker.check(truth["root"], got.root)
    assert checker.ids, "nothing was compared"


def test_the_corpus_covers_what_the_reader_must_handle():
    # One guard that the parametrised comparison above exercises each feature on a real file.
    modes = {load_truth(p)["mode"] for p in LUA_READABLE}
    assert modes == {"binary", "ascii"}
    kinds = {"refs": 0, "tensors": 0, "cuda_ascii": 0, "cuda_binary": 0}
    for p in LUA_READABLE:
        c = TruthChecker()
        c.check(load_truth(p)["root"], read_t7(p).root)
        kinds["refs"] += c.refs
        kinds["tensors"] += c.tensors
        text = (p.parent / (p.name + ".lua-truth.json")).read_text()
        if "torch.CudaTensor" in text:
            kinds["cuda_ascii" if load_truth(p)["mode"] == "ascii" else "cuda_binary"] += 1
    assert kinds["refs"] > 1000 and kinds["tensors"] > 300 and kinds["cuda_ascii"] and kinds["cuda_binary"]


def test_getparameters_views_share_one_storage():
    root = read_t7(FIXTURES / "DeepLearning_HW1/model.t7").root
    linear = root.fields["modules"][2.0]
    assert linear.class_name == "nn.Linear"
    w, b = linear.fields["weight"], linear.fields["bias"]
    assert w.storage is b.storage and w.storage.class_name == "torch.CudaStorage"
    assert (w.offset, b.offset, w.dtype) == (0, 50176, "float32")
    assert np.shares_memory(w.numpy(), w.storage.data)
    np.testing.assert_array_equal(b.numpy(), w.storage.data[50176:50176 + 64])


def test_cycles_and_tables_as_keys():
    t = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/recursive_kv_table.t7").root
    assert list(t.items()) == [(t, t)]
    a = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/recursive_class.t7").root
    assert a.class_name == "A" and a.fields["a"] is a


def test_functions_are_opaque_and_their_index_is_registered():
    fn = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/function.t7").root
    assert isinstance(fn, LuaFunction) and fn.tag == 8 and fn.bytecode.startswith(b"\x1bLJ")
    # compress/model.t7 refers back to its functions many times; the truth comparison checks each
    # back-reference is the same object, here we only confirm functions are among them.
    seen = []
    stack, visited = [read_t7(FIXTURES / "compress/model.t7").root], set()
    while stack:
        v = stack.pop()
        if id(v) in visited:
            if isinstance(v, LuaFunction):
                seen.append(v)
            continue
        visited.add(id(v))
        if isinstance(v, LuaObject):
            stack.append(v.fields)
        elif isinstance(v, LuaTable):
            stack.extend(v.values())
    assert seen and all(isinstance(f.upvalues, LuaTable) for f in seen)


def test_tds_hash_and_vec():
    h = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/tds_hash.t7").root
    assert (h.class_name, h.version) == ("tds.Hash", 0)
    assert h.fields[1] == 2.0 and h.fields[10] == 11.0
    v = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/tds_vec.t7").root
    assert v.fields.array() == [123.0, 456.0]


def test_map_with_key_zero_is_not_a_list():
    t = read_t7(FIXTURES / "python-torchfile/testfiles_x86_64/map_table1.t7").root
    assert t[0] == b"zero" and t.array() == [b"hello", b"world", b"third item", 123.0]


def test_several_objects_in_a_row_yield_the_first_with_a_note(tmp_path):
    stream = read_t7(FIXTURES / "torch-demos/history/face-detector/face.net@39d9878_2011-07-13.ascii-stream")
    assert isinstance(stream.root, T7Tensor) and stream.root.size == () and stream.trailing_bytes == 61410
    assert any("ignored, as torch.load does" in n for n in stream.notes)
    p = tmp_path / "three.t7"
    p.write_bytes(dumps(LuaTable({b"a": 1.0}), 2.0, b"x"))
    got = read_t7(p)
    assert got.root[b"a"] == 1.0 and "holds 3 objects" in got.notes[0]


# -- every value type, both modes --------------------------------------------------------

def _every_value():
    storage = T7Storage("torch.FloatStorage", "float32", np.arange(12, dtype=np.float32))
    t = LuaTable()
    t[1] = b"one"
    t[1.5] = b"one and a half"
    t[True] = b"true"
    t[b"1"] = b"string one"
    t[-2.0] = -0.0
    t[b"nul\x00and\xffbytes\nnewline"] = b"\x00\x01\n\r\xfe"
    t[b"empty"] = b""
    t[b"nan"] = math.nan
    t[b"big"] = 2.0 ** 60 + 2 ** 8
    t[b"tiny"] = 5e-324
    t[b"f"] = False
    t[b"view"] = T7Tensor("torch.FloatTensor", "float32", (2, 3), (1, 2), 4, storage)     # transposed
    t[b"expanded"] = T7Tensor("torch.FloatTensor", "float32", (3, 4), (0, 1), 2, storage)  # stride 0
    t[b"windows"] = T7Tensor("torch.FloatTensor", "float32", (4, 3), (2, 1), 0, storage)   # overlapping
    t[b"empty_tensor"] = T7Tensor("torch.FloatTensor", "float32", (), (), 0, None)
    t[b"resized_to_0"] = T7Tensor("torch.FloatTensor", "float32", (), (), 3, storage)
    t[b"storage"] = storage
    t[b"self"] = t
    t[t] = t
    for cls, dtype, values in [
        ("Byte", "uint8", [0, 255, 7]), ("Char", "int8", [-128, 127, 10]), ("Short", "int16", [-32768, 32767, 3]),
        ("Int", "int32", [-2 ** 31, 2 ** 31 - 1, 5]), ("Long", "int64", [-2 ** 63, 2 ** 63 - 1, 2 ** 53 + 1]),
        ("Double", "float64", [math.pi, -0.0, 1e308]), ("Half", "float16", [65504.0, -6e-8, 0.333]),
        ("CudaHalf", "float16", [1.0, 2.0, 3.0]), ("Cuda", "float32", [1 / 3, 3.4028235e38, 1.4e-45]),
        ("CudaLong", "int64", [1, 2, 3]),
    ]:
        st = T7Storage(f"torch.{cls}Storage", dtype, np.array(values, dtype=np.dtype(dtype)))
        t[cls.encode()] = T7Tensor(f"torch.{cls}Tensor", dtype, (3,), (1,), 0, st)
    t[b"module"] = LuaObject("nn.Linear", LuaTable({b"weight": t[b"view"], b"train": True}), 1)
    t[b"bn"] = LuaObject("nn.BatchNormalization", LuaTable(), 2)
    t[b"legacy"] = LuaObject("nn.OldThing", LuaTable({b"x": 1.0}), None)
    t[b"lua53"] = LuaObject("Thing", LuaTable(), 1.5)
    t[b"gpu"] = LuaObject("nn.GPU", LuaTable({b"device": 2.0}), 1, payload=LuaTable({b"_type": b"torch.CudaTensor"}))
    t[b"fn"] = LuaFunction(b"\x1bLJ\x02bytecode", LuaTable({1: LuaTable({b"name": b"x", b"value": 1.0})}))
    t[b"fn_again"] = t[b"fn"]
    return t


@pytest.mark.parametrize("mode", ["binary", "ascii"])
def test_every_value_type_round_trips(tmp_path, mode):
    p = tmp_path / f"all.{mode}"
    p.write_bytes(dumps(_every_value(), mode=mode))
    got = read_t7(p)
    t = got.root
    assert got.binary == (mode == "binary")
    assert t[1] == b"one" and t[1.5] == b"one and a half" and t[True] == b"true" and t[b"1"] == b"string one"
    assert len(t) == len(_every_value())
    assert math.copysign(1, t[-2.0]) < 0
    assert t[b"nul\x00and\xffbytes\nnewline"] == b"\x00\x01\n\r\xfe" and t[b"empty"] == b""
    assert math.isnan(t[b"nan"]) and t[b"big"] == 2.0 ** 60 + 2 ** 8 and t[b"tiny"] == 5e-324 and t[b"f"] is False
    assert t[b"self"] is t and t[t] is t
    base = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(t[b"view"].numpy(), np.lib.stride_tricks.as_strided(base[4:], (2, 3), (4, 8)))
    np.testing.assert_array_equal(t[b"expanded"].numpy(), np.tile(base[2:6], (3, 1)))
    np.testing.assert_array_equal(t[b"windows"].numpy(), [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]])
    assert t[b"view"].storage is t[b"expanded"].storage is t[b"storage"]
    assert t[b"empty_tensor"].storage is None and t[b"empty_tensor"].numpy().shape == (0,)
    assert t[b"resized_to_0"].storage is t[b"storage"] and t[b"resized_to_0"].offset == 3
    for cls, dtype in [("Byte", "uint8"), ("Long", "int64"), ("Half", "float16"), ("Cuda", "float32"), ("CudaHalf", "float16")]:
        assert t[cls.encode()].dtype == dtype
    np.testing.assert_array_equal(t[b"Long"].numpy(), np.array([-2 ** 63, 2 ** 63 - 1, 2 ** 53 + 1]))
    np.testing.assert_array_equal(t[b"Half"].numpy(), np.array([65504.0, -6e-8, 0.333], dtype=np.float16))
    np.testing.assert_array_equal(t[b"Cuda"].numpy(), np.array([1 / 3, 3.4028235e38, 1.4e-45], dtype=np.float32))
    assert t[b"module"].fields[b"weight"] is t[b"view"] and t[b"bn"].version == 2
    assert t[b"legacy"].version is None and t[b"legacy"].fields[b"x"] == 1.0 and t[b"lua53"].version == 1.5
    assert t[b"gpu"].payload[b"_type"] == b"torch.CudaTensor" and t[b"gpu"].fields[b"device"] == 2.0
    assert t[b"fn_again"] is t[b"fn"] and t[b"fn"].bytecode == b"\x1bLJ\x02bytecode"


def test_ascii_example_of_the_format_notes(tmp_path):
    p = tmp_path / "f.asc"
    p.write_bytes(b"4\n1\n3\nV 1\n17\ntorch.FloatTensor\n2\n2 3\n3 1\n1\n4\n2\n3\nV 1\n18\ntorch.FloatStorage\n6\n"
                  b"-1.5 0 0.333333343 3.40282347e+38 1.40129846e-45 -0\n")
    t = read_t7(p).root
    want = np.array([[-1.5, 0, 1 / 3], [3.4028235e38, 1.4e-45, -0.0]], dtype=np.float32)
    assert t.numpy().tobytes() == want.tobytes()


def test_ascii_special_values_from_glibc_and_msvc(tmp_path):
    p = tmp_path / "nan.asc"
    p.write_bytes(b"4\n1\n3\nV 1\n19\ntorch.DoubleStorage\n7\nnan -nan inf -inf 1.#QNAN 1.#INF -1.#IND\n")
    data = read_t7(p).root.data
    assert np.isnan(data[[0, 1, 4, 6]]).all() and list(data[[2, 3, 5]]) == [math.inf, -math.inf, math.inf]


def test_four_byte_longs_detected_and_forced(tmp_path):
    values = np.array([-2 ** 63, -2 ** 32, -1, 0, 2 ** 53 + 2, 2 ** 62], dtype=np.int64)
    st = T7Storage("torch.LongStorage", "int64", values)
    p = tmp_path / "b32.t7"
    p.write_bytes(dumps(LuaTable({b"l": T7Tensor("torch.LongTensor", "int64", (2, 3), (3, 1), 0, st)}), long_size=4))
    got = read_t7(p)
    assert got.long_size == 4 and any("4-byte longs" in n for n in got.notes)
    # What Torch itself writes with longSize(4): the low 32 bits (format notes 1.2).
    assert list(got.root[b"l"].numpy().reshape(-1)) == [0, 0, -1, 0, 2, 0]
    assert read_t7(p, long_size=4).long_size == 4
    with pytest.raises(FormatError, match="byte"):
        read_t7(p, long_size=8)


def test_big_endian_detected_and_forced(tmp_path):
    st = T7Storage("torch.DoubleStorage", "float64", np.array([1.5, -2.25, 1e300]))
    obj = LuaTable({b"t": T7Tensor("torch.DoubleTensor", "float64", (3,), (1,), 0, st), b"n": 7.0})
    p = tmp_path / "be.t7"
    p.write_bytes(dumps(obj, big_endian=True))
    for got in (read_t7(p), read_t7(p, endian="big")):
        assert got.big_endian and got.root[b"n"] == 7.0
        assert list(got.root[b"t"].numpy()) == [1.5, -2.25, 1e300]
        assert got.root[b"t"].numpy().dtype == np.dtype("<f8")
    with pytest.raises(FormatError):
        read_t7(p, endian="little")


def test_forcing_the_mode(tmp_path):
    p = tmp_path / "x.t7"
    p.write_bytes(dumps(LuaTable({b"a": 1.0}), mode="ascii"))
    assert read_t7(p, mode="ascii").root[b"a"] == 1.0
    with pytest.raises(FormatError, match="byte"):
        read_t7(p, mode="binary")


# -- bad input ---------------------------------------------------------------------------

SMALL = FIXTURES / "python-torchfile/testfiles_x86_64/doubletensor.t7"


def _error(tmp_path, data: bytes, **kw) -> str:
    p = tmp_path / "bad.t7"
    p.write_bytes(data)
    with pytest.raises(FormatError) as exc:
        read_t7(p, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg
    return msg


@pytest.mark.parametrize("name", ["doubletensor.t7", "tds_hash.t7", "nngraph_node.t7", "function.t7"])
def test_every_truncation_is_refused_with_its_offset(tmp_path, name):
    data = (FIXTURES / "python-torchfile/testfiles_x86_64" / name).read_bytes()
    for cut in range(1, len(data)):
        msg = _error(tmp_path, data[:cut])
        assert "byte" in msg, (cut, msg)


def test_every_truncation_of_an_ascii_file_is_refused(tmp_path):
    data = (FIXTURES / "compress/input.asc").read_bytes()
    for cut in list(range(1, 200)) + list(range(200, len(data) - 20, 37)):
        msg = _error(tmp_path, data[:cut], mode="ascii")
        assert "byte" in msg, (cut, msg)


def _tensor_header(nd, sizes, strides, offset, cls=b"torch.FloatTensor"):
    out = struct.pack("<iii", 4, 1, 3) + b"V 1" + struct.pack("<i", len(cls)) + cls + struct.pack("<i", nd)
    n = max(nd, 0)
    return out + struct.pack(f"<{n}q", *sizes) + struct.pack(f"<{n}q", *strides) + struct.pack("<q", offset + 1)


def _storage(n, data=b"", cls=b"torch.FloatStorage", idx=2):
    return struct.pack("<iii", 4, idx, 3) + b"V 1" + struct.pack("<i", len(cls)) + cls + struct.pack("<q", n) + data


def test_impossible_sizes_are_refused_before_any_allocation(tmp_path):
    data = _tensor_header(1, [10 ** 12], [1], 0) + _storage(10 ** 12, b"\0" * 800)
    assert len(data) < 1024
    tracemalloc.start()
    start = time.process_time()       # CPU time: the test must not depend on the load of the machine
    msg = _error(tmp_path, data)
    elapsed = time.process_time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "1000000000000" in msg and "byte 101" in msg
    assert elapsed < 0.5 and peak < 10 << 20


def test_a_view_running_off_its_storage_is_refused(tmp_path):
    msg = _error(tmp_path, _tensor_header(2, [10 ** 6, 10 ** 6], [10 ** 6, 1], 0) + _storage(4, b"\0" * 16))
    assert "runs off its storage of 4 elements" in msg and "byte 36" in msg
    msg = _error(tmp_path, _tensor_header(1, [4], [1], 1) + _storage(4, b"\0" * 16))
    assert "runs off" in msg
    msg = _error(tmp_path, _tensor_header(1, [3], [1], 0))
    assert "truncated" in msg
    msg = _error(tmp_path, _tensor_header(1, [3], [1], 0) + struct.pack("<i", 0))
    assert "has no storage" in msg


@pytest.mark.parametrize("data, said", [
    (struct.pack("<ii", 2, -5), "negative string length -5 at byte 4"),
    (struct.pack("<iii", 3, 1, -1), "negative table size -1 at byte 8"),
    (_storage(-3, idx=1), "negative"),
    (_tensor_header(-1, [], [], 0), "negative tensor nDimension -1"),
    (_tensor_header(1, [-4], [1], 0) + _storage(4, b"\0" * 16), "negative size"),
    (_tensor_header(1, [4], [-1], 0) + _storage(4, b"\0" * 16), "negative stride"),
])
def test_negative_lengths_are_refused(tmp_path, data, said):
    assert said in _error(tmp_path, data)


def test_out_of_range_references_are_refused(tmp_path):
    # A table whose value is a "back reference" to object 99 that was never written.
    data = struct.pack("<iii", 3, 1, 1) + struct.pack("<id", 1, 1.0) + struct.pack("<ii", 3, 99)
    msg = _error(tmp_path, data)
    assert "reference index 99" in msg and "byte 28" in msg


def test_recursion_deeper_than_the_limit_is_refused(tmp_path):
    depth = 200_000
    data = b"".join(struct.pack("<iiiid", 3, i + 1, 1, 1, 1.0) for i in range(depth)) + struct.pack("<i", 0)
    msg = _error(tmp_path, data)
    assert "nested more than" in msg and "byte" in msg
    assert "nested more than 10 levels" in _error(tmp_path, data[:20 * 30] + b"", max_depth=10)


def test_unknown_custom_payload_names_class_and_offset(tmp_path):
    data = struct.pack("<iii", 4, 1, 3) + b"V 1" + struct.pack("<i", 9) + b"my.Custom" + struct.pack("<iq", 1, 42)
    msg = _error(tmp_path, data)
    assert "my.Custom" in msg and "object at byte 0" in msg and "byte 28" in msg and "own serialization" in msg


def test_legacy_file_that_torch_cannot_read_either(tmp_path):
    # Written by a 2011 nn with per-class write methods; Lua torch.load fails on it too.
    with pytest.raises(FormatError, match=r"at byte \d+"):
        read_t7(FIXTURES / "torch-demos/history/face-detector/face.net@1df6894_2011-09-07.ascii")


def test_files_that_are_not_lua_torch_say_what_they_are(tmp_path):
    import torch

    zip_path = tmp_path / "model.t7"
    torch.save({"w": torch.zeros(2)}, zip_path)
    with pytest.raises(FormatError, match="zip archive .*PyTorch checkpoint.*at byte 0"):
        read_t7(zip_path)
    legacy = tmp_path / "legacy.t7"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="Python pickle.*PyTorch"):
        read_t7(legacy)
    assert "Git LFS pointer" in _error(tmp_path, b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    assert "empty file" in _error(tmp_path, b"")
    assert "HTML page" in _error(tmp_path, b"<!DOCTYPE html><html></html>")
    assert "not a Lua Torch7 file" in _error(tmp_path, b"hello world, this is text\n")


def test_unreadable_paths(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_t7(tmp_path / "missing.t7")
    with pytest.raises(FormatError, match="directory"):
        read_t7(tmp_path)


# -- fuzzing: mutated real files give a FormatError or a valid result, nothing else ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_SEEDS = {
    p: p.read_bytes() for p in [
        FIXTURES / "python-torchfile/testfiles_x86_64/doubletensor.t7",
        FIXTURES / "python-torchfile/testfiles_x86_64/tds_hash.t7",
        FIXTURES / "python-torchfile/testfiles_x86_64/function.t7",
        FIXTURES / "python-torchfile/testfiles_x86_64/recursive_kv_table.t7",
        FIXTURES / "python-torchfile/testfiles_x86_64/gmodule_with_linear_identity.t7",
        FIXTURES / "e-lab-torch7-demos/road-net/u1net.net",
        FIXTURES / "compress/input.asc",
        FIXTURES / "word2vec_torch/sampler.t7",
    ]
}
_INTS = [0, 1, -1, 2, 3, 4, 5, 8, 9, 255, 2 ** 31 - 1, -2 ** 31, 2 ** 30, 10 ** 6]
MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("int32"), st.integers(0, 1 << 20), st.sampled_from(_INTS)),
    st.tuples(st.just("int64"), st.integers(0, 1 << 20), st.sampled_from(_INTS + [2 ** 62, -2 ** 63, 10 ** 12])),
    st.tuples(st.just("text"), st.integers(0, 1 << 20), st.sampled_from([b"-1", b"99999999999", b"nan", b"\n", b" ", b"4", b"1e309", b"x"])),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, pos, value in mutations:
        pos %= max(len(out), 1)
        if kind == "flip" and out:
            out[pos] ^= value
        elif kind == "int32":
            out[pos:pos + 4] = struct.pack("<i", value)
        elif kind == "int64":
            out[pos:pos + 8] = struct.pack("<q", value)
        elif kind == "text":
            out[pos:pos + len(value)] = value
        elif kind == "cut":
            del out[pos:]
        elif kind == "delete":
            del out[pos:pos + value]
    return bytes(out)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(seed=st.sampled_from(sorted(FUZZ_SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_real_files_give_only_format_errors(tmp_path_factory, seed, mutations):
    from modelport.formats.base import Options
    from modelport.formats.t7 import T7Source

    path = tmp_path_factory.mktemp("fuzz") / "m.t7"
    path.write_bytes(mutate(FUZZ_SEEDS[seed], mutations))
    try:
        source = T7Source(path, Options())
    except FormatError as exc:
        assert "\n" not in str(exc)
        return
    for name in source.names():     # every view was bounds-checked: materialising cannot fail
        assert len(source.read_bytes(name)) == source.info(name).nbytes
    source.tree()


def test_ascii_arrays_longer_than_one_parsing_chunk(tmp_path, monkeypatch):
    import modelport.t7.streams as streams

    monkeypatch.setattr(streams, "_CHUNK", 1000)
    for dtype, cls in [("float32", "Float"), ("int64", "Long"), ("float16", "Half"), ("float64", "Double")]:
        values = (np.random.default_rng(1).standard_normal(3500) * 1000).astype(dtype)
        p = tmp_path / f"{cls}.asc"
        p.write_bytes(dumps(T7Storage(f"torch.{cls}Storage", dtype, values), mode="ascii"))
        assert read_t7(p).root.data.tobytes() == values.tobytes()
    p = tmp_path / "spaced.asc"                      # hand-made spacing still parses, token by token
    p.write_bytes(b"4\n1\n3\nV 1\n19\ntorch.DoubleStorage\n3\n1  2\t3\n")
    assert list(read_t7(p).root.data) == [1.0, 2.0, 3.0]
