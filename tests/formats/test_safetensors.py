import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

import modelport
from modelport.errors import FormatError
from modelport.formats import get
from modelport.formats.base import Options
from tests.conftest import bitwise_equal, tensor_zoo


def _contiguous(d):
    return {k: v.contiguous() for k, v in d.items()}


def test_reads_what_the_safetensors_library_writes(tmp_path):
    zoo = _contiguous(tensor_zoo())
    save_file(zoo, tmp_path / "a.safetensors", metadata={"origin": "test"})
    with modelport.open(tmp_path / "a.safetensors") as src:
        assert src.format == "safetensors"
        assert set(src.names()) == set(zoo)
        assert src.metadata == {"origin": "test"}
        for name, t in zoo.items():
            assert src.info(name).shape == tuple(t.shape)
            assert bitwise_equal(src.read(name), t), name


def test_written_file_loads_in_the_safetensors_library(tmp_path):
    zoo = _contiguous(tensor_zoo(1))
    save_file(zoo, tmp_path / "a.safetensors")
    with modelport.open(tmp_path / "a.safetensors") as src:
        get("safetensors").write(src, tmp_path / "b.safetensors", Options())
    back = load_file(tmp_path / "b.safetensors")
    assert set(back) == set(zoo)
    for name, t in zoo.items():
        assert bitwise_equal(back[name], t), name
    assert (tmp_path / "a.safetensors").read_bytes()[8:] != b""  # sanity: source untouched


def test_tied_tensors_follow_the_save_model_convention(tmp_path):
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(37, 24)
    model.head = torch.nn.Linear(24, 37, bias=False)
    model.head.weight = model.emb.weight
    save_model(model, tmp_path / "m.safetensors")
    with modelport.open(tmp_path / "m.safetensors") as src:
        aliases = src.aliases()
        assert len(aliases) == 1
        (alias, kept), = aliases.items()
        assert {alias, kept} == {"emb.weight", "head.weight"}
        assert torch.equal(src.state_dict()[alias], model.emb.weight.detach())
        assert alias not in src.metadata


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:5], "truncated"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: (10**12).to_bytes(8, "little") + b[8:], "header length"),
        (lambda b: b[:8] + b"{not json" + b[17:], "corrupt safetensors header"),
    ],
)
def test_corrupt_files_are_format_errors_naming_the_file(tmp_path, mangle, message):
    save_file({"w": torch.ones(4, 4)}, tmp_path / "ok.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mangle((tmp_path / "ok.safetensors").read_bytes()))
    with pytest.raises(FormatError, match=message) as err:
        modelport.open(bad, format="safetensors")
    assert str(bad) in str(err.value)
