"""StateDictSource: a state dict behind the TensorSource interface, written by any writer."""

from __future__ import annotations

import torch

from modelport import formats
from modelport.formats.base import WriteOptions
from modelport.formats.memory import StateDictSource
from tests.conftest import bitwise_equal, tensor_zoo


def test_a_state_dict_written_as_safetensors_and_pt_reads_back_bit_for_bit(tmp_path):
    zoo = {k: v.contiguous() for k, v in tensor_zoo(7).items() if not v.dtype.is_complex}
    src = StateDictSource(zoo, aliases={"tied": "f32"})
    assert src.info("bf16").dtype == "bfloat16" and src.info("scalar").shape == ()
    for fid in ("safetensors", "pt"):
        out = tmp_path / f"out.{fid}"
        formats.get(fid).write(src, out, WriteOptions())
        with formats.open(out) as back:
            assert set(back.names()) | set(back.aliases()) == set(zoo) | {"tied"}
            for name, t in zoo.items():
                assert bitwise_equal(back.read(name), t), (fid, name)
            assert bitwise_equal(back.read("tied"), zoo["f32"])


def test_meta_device_tensors_give_shapes_without_data():
    src = StateDictSource({"w": torch.empty(3, 4, device="meta")})
    assert src.info("w").shape == (3, 4) and src.info("w").nbytes == 48
