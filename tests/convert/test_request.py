"""The convert request: every option of ``modelport convert`` reaches the library ``convert()`` through
one typed object, which the command and ``modelport batch`` both build."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest

from modelport.cli import convert as convert_cmd
from modelport.convert import convert
from modelport.convert.export_options import ExportOptions
from modelport.convert.request import OPTIONS, ConvertRequest, UnusedOption
from modelport.errors import UnsupportedError
from modelport.models.spec import LoadSpec

from ..models import tiny

# Each request field is a field of the typed option object the library takes for it.
EXPORT_FIELDS = {f.name for f in dataclasses.fields(ExportOptions)}
LOAD_FIELDS = {f.name for f in dataclasses.fields(LoadSpec)}


def _cli_options() -> dict[str, click.Option]:
    return {p.opts[0][2:].split("/")[0]: p for p in convert_cmd.params if isinstance(p, click.Option)}


def test_the_request_table_is_the_commands_options():
    cli = _cli_options()
    assert set(cli) == set(OPTIONS)
    defaults = {f.name: f.default for f in dataclasses.fields(ConvertRequest)}
    with convert_cmd.make_context("convert", ["a", "b"]) as ctx:      # what the command gets when nothing is given
        given = {("view" if k == "view_after" else k): v for k, v in ctx.params.items()}
    assert {k: v for k, v in given.items() if k not in ("src", "dst")} == {
        k: v for k, v in defaults.items() if k not in ("src", "dst", "trust_torchscript")}
    for name, (field, kind, arg) in OPTIONS.items():
        param = cli[name]
        assert param.name == ("view_after" if name == "view" else field), name
        if kind == "flag":
            assert param.is_flag, name
        elif kind == "choice":
            assert isinstance(param.type, click.Choice) and tuple(param.type.choices) == arg, name
        elif kind == "int":
            assert param.type.name.startswith("integer"), name
            assert getattr(param.type, "min", None) == arg, name
        elif kind == "file":
            assert isinstance(param.type, click.Path) and param.type.exists and not param.type.dir_okay, name
        elif kind == "format":
            assert param.type.name == "FORMAT", name
        else:
            assert param.type is click.STRING, name


def test_every_export_option_of_the_command_reaches_the_library():
    """Each option the command has for graph targets is a field of ExportOptions or LoadSpec, which
    the library's convert() takes (export=, load=)."""
    graph_only = {"opset", "method", "exporter", "kv_cache", "static_shapes", "external_data", "device", "engine",
                  "input_shape", "input_dtype"}
    request = ConvertRequest("a", "b.onnx", opset=21, method="trace", exporter="torch", kv_cache=False,
                             static_shapes=True, external_data=True, device="cuda", engine="transformers",
                             input_shape="1,3", input_dtype="float16", dtype="fp16", arch="gpt2",
                             assume_config=True, from_="hf")
    export, load = request.export_options(), request.load_spec()
    for field in graph_only:
        where = export if field in EXPORT_FIELDS else load
        assert field in EXPORT_FIELDS | LOAD_FIELDS, field
        assert getattr(where, field) == getattr(request, field), field
    assert export.dtype == "fp16" and load.arch == "gpt2" and load.assume_config and load.format == "hf"
    import inspect

    params = inspect.signature(convert).parameters
    assert "export" in params and "load" in params


def test_library_convert_exports_with_the_options_it_is_given(tmp_path):
    tiny.gpt2(seed=5).save_pretrained(tmp_path / "src")
    dst = tmp_path / "m.onnx"
    result = convert(tmp_path / "src", dst, export=ExportOptions(opset=18, exporter="torch", external_data=True,
                                                                 static_shapes=True),
                     load=LoadSpec(engine="reference"))
    assert result.export.opset == 18 and result.export.external_data == tmp_path / "m.onnx.data"
    assert result.export.exporter.startswith("torch.onnx.export") and result.export.max_abs_diff is not None
    assert "modelport reference gpt2" in result.export.origin
    import onnx

    proto = onnx.load(str(dst), load_external_data=False)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert all(isinstance(d.dim_value, int) and d.dim_value > 0 for d in proto.graph.input[0].type.tensor_type.shape.dim)
    record = json.loads((tmp_path / "m.onnx.modelport.json").read_text())
    assert record["output"]["format"] == "onnx"


def test_library_convert_refuses_export_options_for_weights(tmp_path):
    tiny.gpt2(seed=5).save_pretrained(tmp_path / "src")
    with pytest.raises(UnsupportedError, match="export options apply to onnx and torchscript"):
        convert(tmp_path / "src", tmp_path / "w.safetensors", export=ExportOptions(opset=18))
    assert not (tmp_path / "w.safetensors").exists()


def test_options_a_target_does_not_use_are_refused():
    with pytest.raises(UnusedOption, match="--opset applies to onnx targets, and this one is safetensors"):
        ConvertRequest("a.pt", "b.safetensors", opset=18).target()
    assert ConvertRequest("a.pt", "b.onnx", opset=18).target().id == "onnx"


def test_the_request_leaves_unset_options_unset():
    options = ConvertRequest("a", "b").options()
    assert options == type(options)()
    assert ConvertRequest("a", "b", no_crc32=True, t7_long_size="8").options().crc32 is False
    assert ConvertRequest("a", "b", t7_long_size="8").options().t7_long_size == 8
