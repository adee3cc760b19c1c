"""Output files hashed while the streaming writers write them (modelport/formats/_follow.py).

The digest the follower takes beside the copy must be the digest of the finished file, byte for byte:
the zip writer patches each member's CRC-32 into its data descriptor after the member is written, so
the follower must never hash a descriptor before its CRC is in.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

import modelport.formats as formats
from modelport.formats import _follow
from modelport.formats._follow import Follower, follow, following
from modelport.formats.base import ReadOptions, WriteOptions
from modelport.formats.memory import StateDictSource


def _sd(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {f"layer.{i}.weight": torch.randn(37 + i, 211 + 3 * i, generator=g) for i in range(7)}
    sd["embed.weight"] = torch.randn(401, 293, generator=g)
    return sd


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=["safetensors", "pt", "pt-no-crc"])
def written(request, tmp_path, monkeypatch):
    """A file written from a file source (kernel copies) inside a following block, with small batches and
    windows so the thread hashes many pieces while the writer is still going."""
    monkeypatch.setattr(_follow, "_BATCH", 4096)
    monkeypatch.setattr(_follow, "_WINDOW", 3 * 65536)
    src = tmp_path / "src.safetensors"
    formats.get("safetensors").write(StateDictSource(_sd(), src), src, WriteOptions())
    fmt = "safetensors" if request.param == "safetensors" else "pt"
    dst = tmp_path / f"out.{fmt}"
    with formats.get("safetensors").open(src, ReadOptions()) as source, following(hashlib.sha256) as followed:
        formats.get(fmt).write(source, dst, WriteOptions(crc32=request.param != "pt-no-crc"))
    return dst, followed.digests(), request.param


def test_the_digest_taken_while_writing_is_the_finished_files(written):
    dst, digests, _ = written
    size, digest = digests[str(dst.resolve())]
    assert size == dst.stat().st_size
    assert digest == _sha(dst)


def test_crc32s_patched_beside_the_follower_are_right(written):
    dst, _, kind = written
    if kind == "pt":
        with zipfile.ZipFile(dst) as z:
            assert z.testzip() is None        # every member's CRC-32 checked against its bytes


def test_outside_a_following_block_nothing_follows(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert follow(p) is _follow.IDLE


def test_a_failed_write_abandons_its_follower_and_reports_nothing(tmp_path):
    src = tmp_path / "src.safetensors"
    formats.get("safetensors").write(StateDictSource(_sd(), src), src, WriteOptions())

    class Broken(StateDictSource):
        def span(self, name):
            raise OSError(5, "disk on fire")

    with pytest.raises(OSError):
        with following(hashlib.sha256) as followed:
            formats.get("safetensors").write(Broken(_sd(), src), tmp_path / "out.safetensors", WriteOptions())
    assert followed.digests() == {}


def test_a_follower_hashes_in_pieces_and_at_unaligned_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(_follow, "_BATCH", 1)
    monkeypatch.setattr(_follow, "_WINDOW", 70000)     # windows start at page multiples, pieces do not
    data = bytes(range(256)) * 2000
    p = tmp_path / "f"
    p.write_bytes(data)
    f = Follower(p, hashlib.sha256())
    for pos in (1, 4097, 65537, 200001, 200001, 300000):
        f.final(pos)
    f.close(len(data))
    assert f.digest() == (len(data), hashlib.sha256(data).hexdigest())
