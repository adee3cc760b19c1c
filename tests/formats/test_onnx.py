"""onnx: initializers as tensors; external data outside the model's directory or past its file's end refused."""

from __future__ import annotations

import numpy as np
import pytest

from modelport import formats
from modelport.errors import FormatError

onnx = pytest.importorskip("onnx")


def model_with_external(tmp_path, location, offset=0, length=None, data_bytes=48):
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(48 if length is None else length))):
        w.external_data.add(key=k, value=v)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m").mkdir(exist_ok=True)
    path = tmp_path / "m" / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_external_initializer_read(tmp_path):
    values = np.arange(12, dtype="<f4")
    path = model_with_external(tmp_path, "model.onnx.data")
    (tmp_path / "m" / "model.onnx.data").write_bytes(values.tobytes())
    assert formats.detect(path).id == "onnx"
    with formats.open(path) as src:
        assert src.names() == ["w"] and src.info("w").shape == (3, 4)
        assert src.read("w").flatten().tolist() == values.tolist()


def test_files_are_the_model_then_its_external_data(tmp_path):
    path = model_with_external(tmp_path, "model.onnx.data")
    (tmp_path / "m" / "model.onnx.data").write_bytes(np.arange(12, dtype="<f4").tobytes())
    (tmp_path / "m" / "unrelated.bin").write_bytes(b"x")
    with formats.open(path) as src:
        assert [(f.path, f.role) for f in src.files()] == [(path, "weights"), (path.parent / "model.onnx.data", "external")]


def test_location_outside_the_directory_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"\0" * 64)
    path = model_with_external(tmp_path, "../secret")
    with pytest.raises(FormatError, match="outside the model's directory"):
        formats.open(path)


def test_absolute_location_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"\0" * 64)
    path = model_with_external(tmp_path, str(tmp_path / "secret"))
    with pytest.raises(FormatError, match="not a relative path"):
        formats.open(path)


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"\0" * 64)
    path = model_with_external(tmp_path, "link.data")
    (tmp_path / "m" / "link.data").symlink_to(tmp_path / "secret")
    with pytest.raises(FormatError, match="outside"):
        formats.open(path)


def test_data_past_the_end_of_its_file_is_refused(tmp_path):
    path = model_with_external(tmp_path, "model.onnx.data", offset=16)
    (tmp_path / "m" / "model.onnx.data").write_bytes(b"\0" * 48)       # 16 + 48 > 48
    with pytest.raises(FormatError, match="past the end"):
        formats.open(path)


def test_runnable_refuses_hostile_external_data_before_onnxruntime(tmp_path):
    from modelport.models.runnable import load_runnable

    (tmp_path / "secret").write_bytes(b"\0" * 64)
    path = model_with_external(tmp_path, "../secret")
    with pytest.raises(FormatError, match="outside"):
        load_runnable(path, input_shape="2,3")


def test_parameters_the_exporter_stored_once_for_equal_values_are_read_as_aliases(tmp_path):
    """torch.onnx.export (dynamo=False) keeps one initializer for parameters of equal values (fresh LayerNorm
    weights, say) and names the others by Identity nodes: every parameter is still read, by its name."""
    import warnings

    import torch

    from modelport import formats

    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5), torch.nn.LayerNorm(5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17,
                          do_constant_folding=False)
    with formats.open(tmp_path / "m.onnx") as src:
        names = set(src.names()) | set(src.aliases())
        assert names == set(model.state_dict())
        for name, want in model.state_dict().items():
            assert torch.equal(src.read(name), want), name


# ---------------------------------------------------------------- inline bytes read from the file, not held

def model_of_every_storage(tmp_path):
    """Initializers as raw_data (float32, float16, int64), as float_data, and as external data."""
    from onnx import TensorProto, helper, numpy_helper

    from .test_onnxproto import tiny_model

    path = tiny_model(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    half = numpy_helper.from_array(np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3), "half")
    model.graph.initializer.append(half)
    model.graph.initializer.append(helper.make_tensor("ints", TensorProto.INT64, [3], [7, -1, 2 ** 40]))
    path.write_bytes(model.SerializeToString())
    return path


def test_source_reads_the_tensors_onnx_load_reads(tmp_path):
    from onnx import numpy_helper

    path = model_of_every_storage(tmp_path)
    full = onnx.load(str(path))                                     # external data loaded too
    want = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    with formats.open(path) as src:
        assert sorted(src.names()) == sorted(want)
        assert not any(t.raw_data for t in src.model.graph.initializer)     # the graph alone is held
        for name, arr in want.items():
            assert src.info(name).shape == arr.shape
            assert bytes(src.read_bytes(name)) == arr.astype(arr.dtype.newbyteorder("<")).tobytes(), name


def test_inline_bytes_that_do_not_fit_the_dims_are_refused_when_read(tmp_path):
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3], raw_data=b"\0" * 8)    # 8 bytes for 3 floats
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])], [t])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with formats.open(tmp_path / "m.onnx") as src:
        with pytest.raises(FormatError, match="holds 8 bytes for shape"):
            src.read_bytes("w")


def test_a_file_cut_inside_an_initializer_is_refused_on_open(tmp_path):
    path = model_of_every_storage(tmp_path)
    data = path.read_bytes()
    at = data.index(onnx.load(str(path), load_external_data=False).graph.initializer[0].raw_data)
    path.write_bytes(data[:at + 10])
    with pytest.raises(FormatError, match="past the end of the file"):
        formats.open(path)


@pytest.mark.parametrize("inline_below", [0, 4096])
@pytest.mark.parametrize("ort_version", ["1.32.0", "1.17.3"])
def test_the_graph_for_a_session_reads_its_weights_from_the_file(tmp_path, monkeypatch, inline_below, ort_version):
    """Inline initializers become external data of the model file itself (the small ones get their bytes
    back); onnxruntime runs the copy to the same outputs, and nothing is left beside the model."""
    import types

    from modelport.formats import onnx as onnx_format
    from modelport.models.capture import _session_beside
    from modelport.runtime import import_onnxruntime

    ort = import_onnxruntime()
    path = model_of_every_storage(tmp_path)
    monkeypatch.setattr(onnx_format, "_SESSION_INLINE_BELOW", inline_below)
    model = onnx_format.load_for_session(path)
    by_name = {t.name: t for t in model.graph.initializer}
    assert by_name["w"].data_location == (1 if inline_below == 0 else 0)
    assert by_name["typed"].float_data and by_name["ext"].external_data[0].value == "m.data"
    before = sorted(p.name for p in tmp_path.iterdir())
    fake = types.SimpleNamespace(__version__=ort_version, InferenceSession=ort.InferenceSession,
                                 SessionOptions=ort.SessionOptions)
    session = _session_beside(fake, model, path, ["CPUExecutionProvider"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(session.run(None, {"x": x})[0], want[0])
