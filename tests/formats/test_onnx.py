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
