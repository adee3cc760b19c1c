"""_onnxproto: the model re-encoded without its initializers' raw_data, and where that data lies in the file."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.errors import FormatError
from modelport.formats._onnxproto import metadata_entry, skeleton, varint

onnx = pytest.importorskip("onnx")


def tiny_model(tmp_path, name="m.onnx"):
    """Inline raw_data of two dtypes, a typed float_data initializer, an external one, an empty one, a
    Constant node holding its own raw tensor, metadata appended after the graph (as the exporter does)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w")
    idx = numpy_helper.from_array(np.array([2, 0, 1], dtype=np.int64), "idx")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [5], rng.standard_normal(5).astype(np.float32).tolist())
    empty = numpy_helper.from_array(np.zeros((0, 5), dtype=np.float32), "empty")
    ext = TensorProto(name="ext", data_type=TensorProto.FLOAT, dims=[5], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "m.data"), ("offset", "0"), ("length", "20")):
        ext.external_data.add(key=k, value=v)
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(5, np.float32), "cv"))
    nodes = [helper.make_node("Gather", ["x", "idx"], ["g"]), helper.make_node("MatMul", ["g", "w"], ["y0"]),
             helper.make_node("Add", ["y0", "typed"], ["y1"]), helper.make_node("Add", ["y1", "ext"], ["y2"]),
             const, helper.make_node("Add", ["y2", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                              initializer=[w, idx, typed, empty, ext])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    helper.set_model_props(model, {"k": "v"})
    path = tmp_path / name
    path.write_bytes(model.SerializeToString() + metadata_entry("appended", "after the graph"))
    (tmp_path / "m.data").write_bytes(rng.standard_normal(5).astype("<f4").tobytes())
    return path


def parse(raw: bytes):
    model = onnx.ModelProto()
    model.ParseFromString(raw)
    return model


def test_the_skeleton_is_the_model_without_its_initializers_raw_data(tmp_path):
    path = tiny_model(tmp_path)
    raw, spans = skeleton(path)
    full = onnx.load(str(path), load_external_data=False)
    want = onnx.ModelProto()
    want.CopyFrom(full)
    for t in want.graph.initializer:
        if t.raw_data:
            t.ClearField("raw_data")
    got = parse(raw)
    assert got == want
    assert [p.key for p in got.metadata_props] == ["k", "appended"]
    assert got.graph.node[4].attribute[0].t.raw_data                   # a node's own tensor stays
    assert len(got.graph.initializer[2].float_data) == 5               # typed data stays
    assert got.graph.initializer[3].HasField("raw_data")               # an empty raw_data stays as it was
    assert len(raw) < path.stat().st_size - 60                         # w (60 bytes) and idx left out
    data = path.read_bytes()
    assert [s is not None for s in spans] == [True, True, False, False, False]
    for t, span in zip(full.graph.initializer, spans):
        if span is not None:
            offset, length = span
            assert data[offset:offset + length] == t.raw_data


def test_a_model_without_initializers_is_copied_whole(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    data = helper.make_model(graph).SerializeToString()
    (tmp_path / "r.onnx").write_bytes(data)
    assert skeleton(tmp_path / "r.onnx") == (data, [])


def test_an_empty_file_is_an_empty_skeleton(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    assert skeleton(tmp_path / "e.onnx") == (b"", [])


def _message(field_no: int, body: bytes) -> bytes:
    return varint(field_no << 3 | 2) + varint(len(body)) + body


def _hostile_cases(tmp_path):
    path = tiny_model(tmp_path, "whole.onnx")
    data = path.read_bytes()
    _, spans = skeleton(path)
    offset, length = spans[0]
    return {
        "truncated inside an initializer's raw_data": data[:offset + length // 2],
        "truncated inside the graph's header": data[:data.index(b"\x3a") + 2],
        "a graph length past the end": b"\x08\x07" + b"\x3a" + varint(1 << 40) + b"\x00" * 8,
        "a raw_data length past its initializer": b"\x08\x07" + _message(7, _message(5, b"\x4a" + varint(100) + b"\x00" * 4)),
        "a varint that never ends": b"\x08" + b"\xff" * 40,
        "a varint cut by the end of the file": b"\x08\x07\x3a\xff\xff",
        "a graph that is a varint": b"\x08\x07\x38\x01",
        "raw_data that is a varint": b"\x08\x07" + _message(7, _message(5, b"\x42\x01w\x48\x05")),
        "an initializer that is fixed64": b"\x08\x07" + _message(7, b"\x29" + b"\x00" * 8),
        "a group": b"\x08\x07\x3b\x3c",
        "field number 0": b"\x08\x07\x02\x00",
    }


HOSTILE = ["truncated inside an initializer's raw_data", "truncated inside the graph's header",
           "a graph length past the end", "a raw_data length past its initializer", "a varint that never ends",
           "a varint cut by the end of the file", "a graph that is a varint", "raw_data that is a varint",
           "an initializer that is fixed64", "a group", "field number 0"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_structure_is_one_line_naming_the_file(tmp_path, case):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_hostile_cases(tmp_path)[case])
    with pytest.raises(FormatError) as info:
        skeleton(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message


def test_repeated_raw_data_keeps_the_last_as_a_parser_does(tmp_path):
    tensor = b"\x08\x02\x10\x01\x42\x01w" + b"\x4a\x04" + b"AAAA" + b"\x4a\x04" + b"BBBB"   # dims [2], float, "w"
    data = b"\x08\x07" + _message(7, _message(5, tensor))
    (tmp_path / "r.onnx").write_bytes(data)
    raw, spans = skeleton(tmp_path / "r.onnx")
    offset, length = spans[0]
    assert data[offset:offset + length] == b"BBBB" == parse(data).graph.initializer[0].raw_data
    assert not parse(raw).graph.initializer[0].raw_data
