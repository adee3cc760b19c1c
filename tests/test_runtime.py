import pytest

from modelport import runtime
from modelport.errors import MissingDependencyError


def test_neither_package_names_both_extras(monkeypatch):
    monkeypatch.setattr(runtime, "installed_packages", lambda: [])
    with pytest.raises(MissingDependencyError, match=r"modelport\[cpu\].*modelport\[gpu\]"):
        runtime.import_onnxruntime()


def test_both_packages_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(runtime, "installed_packages", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(MissingDependencyError, match="break each other.*pip uninstall"):
        runtime.import_onnxruntime()


def test_the_installed_package_imports_and_reports_real_providers(tmp_path):
    ort = runtime.import_onnxruntime()
    assert len(runtime.installed_packages()) == 1
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9          # what every onnxruntime of the extras reads
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
    assert runtime.session_providers(session)[-1] == "CPUExecutionProvider"
