"""Every pair of weight formats: a chain of conversions gives back the tensors bit for bit."""

import itertools
import json

import pytest
import torch

import modelport
from modelport.formats.base import Options
from tests.conftest import bitwise_equal, tensor_zoo, tied_state_dict

WEIGHT_FORMATS = ["pt", "safetensors", "hf"]
SUFFIX = {"pt": ".pt", "safetensors": ".safetensors", "hf": ""}


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    d = tmp_path_factory.mktemp("origin")
    tensors = {**tensor_zoo(7), **tied_state_dict(7)}
    torch.save(tensors, d / "origin.pt")
    (d / "config.json").write_text(json.dumps({"model_type": "test-zoo"}))
    return d, tensors


def _convert(src, dst, fmt, config, **kw):
    return modelport.convert(src, dst, to=fmt, options=Options(config=config), **kw)


@pytest.mark.parametrize("a, b", list(itertools.permutations(WEIGHT_FORMATS, 2)))
def test_pair_round_trip_is_bitwise(origin, tmp_path, a, b):
    d, tensors = origin
    config = d / "config.json"
    first = tmp_path / f"first{SUFFIX[a]}"
    second = tmp_path / f"second{SUFFIX[b]}"
    back = tmp_path / f"back{SUFFIX[a]}"
    src = d / "origin.pt"
    if a != "pt":
        _convert(src, first, a, config, shard_size=2000 if a == "hf" else None)
        src = first
    _convert(src, second, b, config, shard_size=2000 if b == "hf" else None)
    _convert(second, back, a, config)
    for path in (second, back):
        with modelport.open(path) as got:
            full = got.state_dict()
            assert set(full) == set(tensors), path
            for name, t in tensors.items():
                assert bitwise_equal(full[name], t.contiguous()), (path, name)
            assert got.aliases().get("lm_head.weight", "transformer.wte.weight") == "transformer.wte.weight"
            assert "lm_head.weight" in got.aliases() or "transformer.wte.weight" in got.aliases()


def test_pt_written_by_modelport_loads_in_torch_with_sharing(origin, tmp_path):
    d, tensors = origin
    _convert(d / "origin.pt", tmp_path / "x.safetensors", "safetensors", None)
    _convert(tmp_path / "x.safetensors", tmp_path / "y.pt", "pt", None)
    loaded = torch.load(tmp_path / "y.pt", weights_only=True)
    for name, t in tensors.items():
        assert bitwise_equal(loaded[name], t.contiguous()), name
    assert loaded["lm_head.weight"].data_ptr() == loaded["transformer.wte.weight"].data_ptr()


def test_hf_output_loads_with_safetensors_library(origin, tmp_path):
    from safetensors.torch import load_file

    d, tensors = origin
    _convert(d / "origin.pt", tmp_path / "h", "hf", d / "config.json")
    loaded = load_file(tmp_path / "h" / "model.safetensors")
    assert "lm_head.weight" not in loaded  # stored once, restored by readers from the metadata
    for name, t in tensors.items():
        if name != "lm_head.weight":
            assert bitwise_equal(loaded[name], t.contiguous()), name


T7_DTYPES = {"f32", "f16", "f64", "i64", "i32", "i8", "u8", "special", "transposed", "sliced"}   # what Torch7 can hold


@pytest.mark.parametrize("other", WEIGHT_FORMATS)
def test_t7_round_trips_with_every_weight_format(tmp_path, other):
    tensors = {k: v for k, v in tensor_zoo(11).items() if k in T7_DTYPES}
    tensors.update(tied_state_dict(11))
    torch.save(tensors, tmp_path / "origin.pt")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "test-zoo"}))
    _convert(tmp_path / "origin.pt", tmp_path / "a.t7", "t7", config)
    mid = tmp_path / f"mid{SUFFIX[other]}"
    _convert(tmp_path / "a.t7", mid, other, config)
    _convert(mid, tmp_path / "b.t7", "t7", config)
    for path in (mid, tmp_path / "b.t7"):
        with modelport.open(path) as got:
            full = got.state_dict()
            assert set(full) == set(tensors), path
            for name, t in tensors.items():
                assert bitwise_equal(full[name], t.contiguous()), (path, name)
