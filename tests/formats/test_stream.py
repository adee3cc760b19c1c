"""Aligned kernel copies: pt and safetensors writers put large tensors at their source offset mod 64 KiB.

copy_file_range is faster when source and destination offsets agree modulo 64 KiB; the writers pad
(a zip extra field, spaces after a safetensors header) where they are free to, and only for spans of
at least ALIGN_MIN bytes. These tests check that the padded files still load everywhere, bit for bit,
and that the padding stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import modelport.formats as formats
from modelport.formats import _stream
from modelport.formats._follow import following
from modelport.formats._stream import ALIGN_MIN, ALIGN_MOD, Sink
from modelport.formats._torchzip import ZipReader, ZipWriter
from modelport.errors import FormatError
from modelport.formats.base import Span, WriteOptions
from tests.conftest import bitwise_equal

PT = formats.get("pt")
ST = formats.get("safetensors")


def _model(seed: int) -> dict[str, torch.Tensor]:
    """Large tensors of several dtypes (each >= ALIGN_MIN bytes, distinct sizes) among small ones."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "embed.weight": torch.randn(1637, 800, generator=g),                      # 5.24 MB
        "embed.bias": torch.randn(800, generator=g),
        "block.0.w": torch.randn(1500, 1450, generator=g).to(torch.bfloat16),       # 4.35 MB
        "block.0.b": torch.randint(-100, 100, (37,), generator=g, dtype=torch.int8),   # odd size: shifts what follows
        "block.1.w": torch.randn(1100, 1000, generator=g),                          # 4.40 MB
        "block.1.b": torch.randn(600, generator=g, dtype=torch.float64),
        "counts": torch.randint(0, 1 << 40, (560_000,), generator=g),               # 4.48 MB int64
    }
    sd["head.weight"] = sd["embed.weight"]      # tied
    return sd


def _same_tensors(back: dict, sd: dict) -> None:
    assert set(back) == set(sd)
    for name, t in sd.items():
        assert bitwise_equal(back[name], t), name


def _pt_from_safetensors(tmp_path: Path, sd: dict, align: bool = True) -> tuple[Path, Path]:
    src = tmp_path / "src.safetensors"
    if not src.exists():
        save_file({k: v for k, v in sd.items() if k != "head.weight"}, src)
    out = tmp_path / f"out-{align}.pt"
    with formats.open(src) as s:
        PT.write(s, out, WriteOptions(align=align))
    return src, out


def test_pt_storages_keep_their_source_offset_mod_64k(tmp_path):
    sd = _model(0)
    src, out = _pt_from_safetensors(tmp_path, sd)
    aligned = 0
    with formats.open(src) as s, formats.open(out) as o:
        for name in s.names():
            a, b = s.span(name), o.span(name)
            if a.nbytes >= ALIGN_MIN and a.offset % 8 == 0:
                assert b.offset % ALIGN_MOD == a.offset % ALIGN_MOD, name
                aligned += 1
            else:
                assert b.offset % 64 == 0, name     # small tensors: torch.save's layout
    assert aligned >= 3
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None                                 # CRC-32s right
        assert "archive/.format_version" not in zf.namelist()       # torch must read offsets, not compute them
        for info in zf.infolist():
            with open(out, "rb") as f:
                f.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
            assert extra_len < ALIGN_MOD                            # padding bounded per member
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", str(out)], capture_output=True).returncode == 0


def test_padding_costs_under_64k_per_large_storage(tmp_path):
    sd = _model(1)
    _, out = _pt_from_safetensors(tmp_path, sd)
    _, plain = _pt_from_safetensors(tmp_path, sd, align=False)
    large = sum(1 for k, t in sd.items() if k != "head.weight" and t.nbytes >= ALIGN_MIN)
    assert 0 <= out.stat().st_size - plain.stat().st_size < large * ALIGN_MOD
    with zipfile.ZipFile(plain) as zf:
        assert "archive/.format_version" in zf.namelist()


@pytest.mark.parametrize("mmap", [False, True])
def test_padded_pt_loads_in_torch_bit_exact(tmp_path, mmap):
    sd = _model(2)
    _, out = _pt_from_safetensors(tmp_path, sd)
    back = torch.load(out, weights_only=True, mmap=mmap)
    _same_tensors(back, {k: v for k, v in sd.items() if k != "head.weight"})


def test_padded_pt_loads_when_torch_is_asked_to_compute_offsets(tmp_path, monkeypatch):
    """Without .format_version torch reads each offset from its header even when told to compute them."""
    import torch.utils.serialization.config as config

    sd = _model(3)
    _, out = _pt_from_safetensors(tmp_path, sd)
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")
    before = config.load.calculate_storage_offsets
    config.load.calculate_storage_offsets = True
    try:
        back = torch.load(out, weights_only=True, mmap=True)
    finally:
        config.load.calculate_storage_offsets = before
    _same_tensors(back, {k: v for k, v in sd.items() if k != "head.weight"})


def test_shared_storages_and_ties_survive_padding(tmp_path):
    sd = _model(4)
    sd["embed.rows"] = sd["embed.weight"][3:900]          # a view into the same storage
    path = tmp_path / "src.pt"
    torch.save(sd, path)
    with formats.open(path) as s:
        PT.write(s, tmp_path / "out.pt", WriteOptions())
        with formats.open(tmp_path / "out.pt") as o:
            key = s.storage_view("embed.weight").key
            assert o.storage_span(o.storage_view("embed.weight").key).offset % ALIGN_MOD == s.storage_span(key).offset % ALIGN_MOD
    back = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)
    _same_tensors(back, sd)
    assert back["head.weight"].data_ptr() == back["embed.weight"].data_ptr()
    assert back["embed.rows"].untyped_storage().data_ptr() == back["embed.weight"].untyped_storage().data_ptr()


def test_safetensors_header_aligns_the_largest_tensor(tmp_path):
    sd = _model(5)
    path = tmp_path / "src.pt"
    torch.save(sd, path)
    with formats.open(path) as s:
        ST.write(s, tmp_path / "out.safetensors", WriteOptions())
        ST.write(s, tmp_path / "plain.safetensors", WriteOptions(align=False))
        with formats.open(tmp_path / "out.safetensors") as o, formats.open(tmp_path / "plain.safetensors") as p:
            largest = max(s.names(), key=lambda n: s.info(n).nbytes)
            assert o.span(largest).offset % ALIGN_MOD == s.span(largest).offset % ALIGN_MOD
            head, plain_head = o.span(o.names()[0]).offset, p.span(p.names()[0]).offset
            assert min(o.span(n).offset for n in o.names()) == head and head % 8 == 0
            assert 0 <= head - plain_head < ALIGN_MOD                   # header padding bounded
            assert p.span(largest).offset % ALIGN_MOD != s.span(largest).offset % ALIGN_MOD   # the test can fail
    for f in ("out.safetensors", "plain.safetensors"):
        back = load_file(tmp_path / f)      # the safetensors library validates the header and offsets
        _same_tensors(back, {k: v for k, v in sd.items() if k != "head.weight"})
        with safe_open(tmp_path / f, framework="pt") as so:
            assert so.metadata() == {"head.weight": "embed.weight"}
    raw = (tmp_path / "out.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8 + n - 1:8 + n] == b" "      # padded with spaces, as the format allows


def test_many_tiny_tensors_get_no_padding(tmp_path):
    g = torch.Generator().manual_seed(6)
    sd = {f"layer.{i}.w": torch.randn(3 + i % 7, 5 + i % 11, generator=g) for i in range(300)}
    sd["mid"] = torch.randn(1000, 1000, generator=g)     # 4 MB: just under ALIGN_MIN (4 MiB)
    path = tmp_path / "src.pt"
    torch.save(sd, path)
    with formats.open(path) as s:
        for fmt, suffix in ((PT, "pt"), (ST, "safetensors")):
            fmt.write(s, tmp_path / f"a.{suffix}", WriteOptions())
            fmt.write(s, tmp_path / f"b.{suffix}", WriteOptions(align=False))
            assert (tmp_path / f"a.{suffix}").read_bytes() == (tmp_path / f"b.{suffix}").read_bytes()


@pytest.mark.parametrize("shift", [0, 8, 4096, ALIGN_MOD - 8])
def test_zip_member_lands_at_any_residue_even_past_4gib(tmp_path, shift):
    """The padding field holds the distance with zip64 headers too; zipfile and modelport find the data."""
    path = tmp_path / "big.zip"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.lseek(fd, (4 << 30) + 123, os.SEEK_SET)      # a sparse start: the header offset needs zip64
    zw = ZipWriter(Sink(fd), "archive", crc32=True)
    payload = bytes(range(256)) * 40
    zw.begin("data/0", len(payload), match=7 * ALIGN_MOD + shift)
    zw._write(payload)
    zw.end()
    zw.close()
    os.close(fd)
    zr = ZipReader(path, path.stat().st_size)
    assert zr.data_offset("archive/data/0") % ALIGN_MOD == shift
    with zipfile.ZipFile(path) as zf:
        assert zf.read("archive/data/0") == payload


def test_out_of_reach_residue_falls_back_to_64_byte_alignment(tmp_path):
    path = tmp_path / "a.zip"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    zw = ZipWriter(Sink(fd), "archive", crc32=True)
    base = 30 + len("archive/x") + 4
    zw.begin("x", 100, match=base - 8)      # would need 64 KiB - 8 of padding: more than a field holds
    zw._write(b"\1" * 100)
    zw.end()
    zw.close()
    os.close(fd)
    zr = ZipReader(path, path.stat().st_size)
    assert zr.data_offset("archive/x") == 64
    with zipfile.ZipFile(path) as zf:
        assert zf.read("archive/x") == b"\1" * 100


@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("use_zlib_ng", [True, False])
def test_crc32s_right_with_or_without_zlib_ng_and_across_pieces(tmp_path, monkeypatch, use_zlib_ng, hashed):
    """CRC-32s are taken from the bytes in flight, piece by piece, whether or not the output is hashed
    too: every piece boundary and start counts."""
    if use_zlib_ng:
        pytest.importorskip("zlib_ng")
    else:
        monkeypatch.setitem(sys.modules, "zlib_ng", None)       # the import fails: zlib's crc32
    monkeypatch.setattr(_stream, "_PIECE", 3 * 4096 + 8)          # pieces that cut tensors at odd bounds
    sd = _model(7)
    with following(hashlib.sha256) if hashed else contextlib.nullcontext() as followed:
        _, out = _pt_from_safetensors(tmp_path, sd)
    if hashed:
        assert followed.digests()[str(out.resolve())] == (out.stat().st_size, hashlib.sha256(out.read_bytes()).hexdigest())
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert all(i.CRC != 0 for i in zf.infolist() if i.file_size)


def _sink_file(tmp_path: Path, data: bytes) -> Path:
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    return src


@pytest.mark.parametrize("start", [0, 4096, 100])
def test_sink_copies_spans_in_the_kernel_only_where_pages_line_up(tmp_path, monkeypatch, start):
    """No hash, no CRC: copy_file_range where the source and output offsets agree modulo a page, else
    through the buffer; the bytes are the same either way."""
    data = bytes(range(256)) * 3000
    src = _sink_file(tmp_path, data)
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd)
        sink.write(b"h" * start)
        sink.copy(Span(src, 4096, 300_000))
        sink.copy(Span(src, 5, 70_000))          # never page-aligned with the output here
        assert sink.close() == (start + 370_000, None)
    finally:
        os.close(fd)
    assert out.read_bytes() == b"h" * start + data[4096:304096] + data[5:70005]
    assert len(calls) == (start % 4096 == 0)


def test_sink_hashes_every_byte_it_writes_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "_PIECE", 10_000)
    data = bytes(range(256)) * 3000
    src = _sink_file(tmp_path, data)
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd, hashlib.sha256())
        sink.write(b"head")
        sink.copy(Span(src, 7, 123_457))
        sink.write(bytearray(b"x" * 25_001))
        sink.crc_begin(zlib.crc32)
        sink.copy(Span(src, 4096, 50_000))
        sink.crc_end(lambda crc: struct.pack("<4sI", b"CRC:", crc))     # written now, patched by the thread
        sink.write(b"tail")
        size, digest = sink.close()
    finally:
        os.close(fd)
    assert size == out.stat().st_size == 4 + 123_457 + 25_001 + 50_000 + 8 + 4
    raw = out.read_bytes()
    assert raw[-12:] == b"CRC:" + struct.pack("<I", zlib.crc32(data[4096:54096])) + b"tail"
    assert digest == hashlib.sha256(raw).hexdigest()       # the hash holds the patched bytes, not the zeros


def test_sink_refuses_a_file_that_grew_behind_its_back(tmp_path):
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd, hashlib.sha256())
        sink.write(b"abc")
        os.pwrite(fd, b"zz", 10)
        with pytest.raises(RuntimeError, match="holds 12 bytes where 3 were written"):
            sink.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("hashed", [False, True])
def test_sink_names_a_source_that_ends_early(tmp_path, hashed):
    src = _sink_file(tmp_path, b"\1" * 10_000)
    fd = os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd, hashlib.sha256() if hashed else None)
        sink.write(b"x" * 3)                      # offsets disagree: the buffered copy finds the end
        with pytest.raises(FormatError, match="src.bin: ends before byte 20000"):
            sink.copy(Span(src, 0, 20_000))
        sink.abandon()
    finally:
        os.close(fd)


def test_sink_hashes_what_it_wrote_even_when_the_callers_buffer_changes_afterwards(tmp_path, monkeypatch):
    """A mutable buffer goes through the sink's own buffers: the digest is the file's, not what the
    caller's buffer holds by the time the thread gets to it."""
    monkeypatch.setattr(_stream, "_PIECE", 4096)
    buf = bytearray(b"a" * 50_000)
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd, hashlib.sha256())
        sink.write(buf)
        buf[:] = b"b" * 50_000
        sink.write(memoryview(buf))
        buf[:] = b"c" * 50_000
        size, digest = sink.close()
    finally:
        os.close(fd)
    assert out.read_bytes() == b"a" * 50_000 + b"b" * 50_000
    assert (size, digest) == (100_000, hashlib.sha256(out.read_bytes()).hexdigest())


@pytest.mark.parametrize("hashed", [False, True])
def test_sink_reserves_the_file_then_cuts_what_was_not_written(tmp_path, hashed):
    data = bytes(range(256)) * 3000
    src = _sink_file(tmp_path, data)
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        sink = Sink(fd, hashlib.sha256() if hashed else None)
        sink.write(b"head")
        sink.reserve(1_000_000)
        if _stream._fallocate:                       # where the system can: the blocks are there before the copy
            assert os.fstat(fd).st_size == 1_000_004
            assert os.fstat(fd).st_blocks * 512 >= 1_000_000
        sink.copy(Span(src, 3, 300_000))
        size, digest = sink.close()
    finally:
        os.close(fd)
    assert size == out.stat().st_size == 300_004
    assert out.read_bytes() == b"head" + data[3:300_003]
    assert digest == (hashlib.sha256(out.read_bytes()).hexdigest() if hashed else None)


def test_sink_reserve_says_a_full_disk_at_once_and_falls_back_where_it_cannot(tmp_path, monkeypatch):
    import errno

    if not sys.platform.startswith("linux"):
        pytest.skip("fallocate(2) is Linux's")
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    failing = {"errno": errno.ENOSPC}

    def fallocate(*_):
        import ctypes

        ctypes.set_errno(failing["errno"])
        return -1

    monkeypatch.setattr(_stream, "_fallocate", fallocate)
    try:
        with pytest.raises(OSError) as err:
            Sink(fd).reserve(1 << 40)
        assert err.value.errno == errno.ENOSPC
        failing["errno"] = errno.EOPNOTSUPP          # a filesystem without fallocate: the writes allocate
        sink = Sink(fd)
        sink.reserve(100)
        sink.write(b"x" * 10)
        assert sink.close() == (10, None)
    finally:
        os.close(fd)
