"""Output files hashed as the streaming writers write them (modelport/formats/_follow.py).

The digest taken from the bytes in flight must be the digest of the finished file, byte for byte, and
of every byte of it: headers, padding, tensor data copied from a file or handed over in memory, the
zip members' data descriptors with their CRC-32s, the central directory.
"""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import modelport.formats as formats
from modelport.formats import _follow, _stream
from modelport.formats._follow import follow, following
from modelport.formats.base import ReadOptions, WriteOptions
from modelport.formats.memory import StateDictSource


def _sd(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {f"layer.{i}.weight": torch.randn(37 + i, 211 + 3 * i, generator=g) for i in range(7)}
    sd["embed.weight"] = torch.randn(401, 293, generator=g)
    return sd


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KINDS = ["safetensors", "pt", "pt-no-crc"]


def _write(kind: str, source, dst: Path, new_hasher=hashlib.sha256):
    fmt = "safetensors" if kind == "safetensors" else "pt"
    with following(new_hasher) as followed:
        formats.get(fmt).write(source, dst, WriteOptions(crc32=kind != "pt-no-crc"))
    return followed.digests()


@pytest.fixture(params=KINDS)
def written(request, tmp_path, monkeypatch):
    """A file written from a file source (tensor bytes copied from its spans) inside a following block,
    in small pieces so the thread hashes many of them while the writer is still going."""
    monkeypatch.setattr(_stream, "_PIECE", 3 * 4096 + 24)       # pieces cut tensors at odd bounds
    src = tmp_path / "src.safetensors"
    formats.get("safetensors").write(StateDictSource(_sd(), src), src, WriteOptions())
    dst = tmp_path / f"out.{'safetensors' if request.param == 'safetensors' else 'pt'}"
    with formats.get("safetensors").open(src, ReadOptions()) as source:
        digests = _write(request.param, source, dst)
    return dst, digests, request.param


def test_the_digest_taken_while_writing_is_the_finished_files(written):
    dst, digests, _ = written
    size, digest = digests[str(dst.resolve())]
    assert size == dst.stat().st_size
    assert digest == _sha(dst)


def test_crc32s_taken_in_flight_are_right(written):
    dst, _, kind = written
    if kind == "pt":
        with zipfile.ZipFile(dst) as z:
            assert z.testzip() is None        # every member's CRC-32 checked against its bytes
            assert all(i.CRC != 0 for i in z.infolist() if i.file_size)
    elif kind == "pt-no-crc":
        with zipfile.ZipFile(dst) as z:
            assert all(i.CRC == 0 for i in z.infolist())


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_handed_over_in_memory_are_hashed_too(tmp_path, kind):
    """A source without file spans (tensors in memory, or cast): every byte goes through Sink.write."""
    dst = tmp_path / "out.bin"
    digests = _write(kind, StateDictSource(_sd(5), tmp_path / "mem.pt"), dst)
    assert digests[str(dst.resolve())] == (dst.stat().st_size, _sha(dst))


def test_blake3_digest_taken_in_flight_equals_an_independent_one(tmp_path):
    blake3 = pytest.importorskip("blake3")
    src = tmp_path / "src.pt"
    torch.save(_sd(6), src)
    dst = tmp_path / "out.safetensors"
    with formats.get("pt").open(src, ReadOptions()) as source:
        digests = _write("safetensors", source, dst, blake3.blake3)
    assert digests[str(dst.resolve())] == (dst.stat().st_size, blake3.blake3(dst.read_bytes()).hexdigest())


def test_outside_a_following_block_nothing_is_hashed(tmp_path):
    p = tmp_path / "x"
    h = follow(p)
    assert h is _follow.IDLE and h.hasher is None
    h.done(3, "abc")
    assert h.result is None


def _hash_threads() -> set:
    return {t for t in threading.enumerate() if t.name == "modelport-hash-output"}


def test_a_failed_write_reports_no_digest_and_stops_its_thread(tmp_path):
    src = tmp_path / "src.safetensors"
    formats.get("safetensors").write(StateDictSource(_sd(), src), src, WriteOptions())

    class Broken(StateDictSource):
        def read_bytes(self, name):
            if name == "layer.3.weight":      # mid-write, after other tensors went through the thread
                raise OSError(5, "disk on fire")
            return super().read_bytes(name)

    before = _hash_threads()
    for fmt in ("safetensors", "pt"):
        with pytest.raises(OSError, match="disk on fire"):
            with following(hashlib.sha256) as followed:
                formats.get(fmt).write(Broken(_sd(), src), tmp_path / f"out.{fmt}", WriteOptions())
        assert followed.digests() == {}
        assert _hash_threads() <= before


def test_an_error_of_the_hasher_fails_the_write(tmp_path):
    class Failing:
        def __init__(self):
            self.n = 0

        def update(self, data):
            self.n += 1
            if self.n == 3:
                raise ValueError("hasher broke")

        def hexdigest(self):
            return "x"

    before = _hash_threads()
    with pytest.raises(ValueError, match="hasher broke"):
        _write("pt", StateDictSource(_sd(), tmp_path / "mem.pt"), tmp_path / "out.pt", Failing)
    assert _hash_threads() <= before
