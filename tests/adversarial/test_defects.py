"""Each defect a red-team run found, kept fixed: memory outside a storage, files outside the model,
unbounded memory, blocking inputs, tracebacks, terminal injection, unclear outcomes."""

from __future__ import annotations

import json
import os
import struct
import zipfile

import pytest

from modelport import formats
from modelport.atomic import MARKER
from modelport.errors import FormatError, ModelportError

from .hostile import (good_pt_zip, run_measured, state_dict_pickle, t7_tensor_file, tensor_call, write_pt_legacy,
                      write_pt_zip, write_safetensors)

FLOATS16 = struct.pack("<4f", 1, 2, 3, 4)


def _refused(path, fmt=None, match=None, **opts):
    from modelport.formats.base import Options

    with pytest.raises(FormatError, match=match):
        with formats.open(path, fmt, Options(**opts)) as src:
            for name in src.names():
                src.read_bytes(name)


def _clean_cli(r, match: str | None = None):
    """One line on stderr, exit 2, no traceback, within 2 s of CPU time and 300 MB (the command's own: neither
    depends on the load of the machine)."""
    assert r["rc"] == 2, r
    assert "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1, r["stderr"]
    assert r["cpu"] < 2.0 + 1.5, r["cpu"]       # 2 s for the case, 1.5 s for the interpreter and imports
    assert r["rss"] < 300 << 20, r["rss"]
    if match:
        assert match in r["stderr"], r["stderr"]


# -- 1. memory read outside a storage ----------------------------------------------------------------

@pytest.mark.parametrize("build", [{"stride": (-4,)}, {"stride": (-100000,)}, {"offset": 10**6}, {"shape": (10**6,)},
                                   {"storage": 0}, {"__class__": 0}])
@pytest.mark.parametrize("container", [write_pt_zip, write_pt_legacy])
def test_state_applied_to_a_tensor_is_refused(tmp_path, build, container):
    pkl = state_dict_pickle({"w": tensor_call("0", 4, 0, (4,), (1,), build=build)})
    _refused(container(tmp_path / "b.pt", pkl, {"0": FLOATS16}), match="state applied")


@pytest.mark.parametrize("view", [((4,), (-1,), 3), ((2, 2), (2, -1), 1), ((3,), (2,), 0), ((2,), (1,), 3), ((5,), (1,), 0)])
def test_views_outside_their_storage_are_refused(tmp_path, view):
    shape, stride, offset = view
    pkl = state_dict_pickle({"w": tensor_call("0", 4, offset, shape, stride)})
    _refused(write_pt_zip(tmp_path / "v.pt", pkl, {"0": FLOATS16}))


def test_the_661_byte_attack_converts_to_nothing(tmp_path):
    pkl = state_dict_pickle({"w": tensor_call("0", 4, 0, (64,), (1,), build={"stride": (-16,)})})
    src = write_pt_zip(tmp_path / "b.pt", pkl, {"0": FLOATS16})
    r = run_measured(["convert", src, tmp_path / "o.safetensors"])
    _clean_cli(r, "state applied")
    assert not (tmp_path / "o.safetensors").exists()


# -- 2. files outside the model directory -------------------------------------------------------------

def _hf_dir(tmp_path, name="m"):
    from modelport.formats.safetensors import write_file

    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with formats.open(good_pt_zip(tmp_path / f"{name}.pt")) as src:
        write_file(src, d / "model.safetensors")
    return d


def test_side_files_are_regular_allow_listed_files_inside(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2")
    d = _hf_dir(tmp_path)
    (d / "tokenizer.json").symlink_to(secret)
    (d / "vocab.json").write_text("{}")
    (d / ".git").mkdir()
    (d / ".git" / "config").write_text("url = https://user:token@example.invalid/x")
    (d / "notes.bin").write_bytes(b"x")
    os.mkfifo(d / "merges.txt")
    with formats.open(d) as src:
        assert set(src.side_files) == {"vocab.json"}
        assert any(".git/" in n and "tokenizer.json" in n for n in src.notes)
    r = run_measured(["convert", d, tmp_path / "out", "--to", "hf"])
    assert r["rc"] == 0, r["stderr"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == ["config.json", "model.safetensors", "vocab.json"]
    assert "hunter2" not in "".join(p.read_text(errors="replace") for p in out.iterdir() if p.is_file())


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", ".git/x.safetensors", "link.safetensors"])
def test_weight_map_names_stay_inside(tmp_path, shard):
    d = _hf_dir(tmp_path)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((d / "model.safetensors").read_bytes())
    (d / "link.safetensors").symlink_to(outside)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"layer0.weight": shard}}))
    _refused(d, "hf", match="outside the model directory")


def test_the_hugging_face_cache_layout_is_followed(tmp_path):
    d = _hf_dir(tmp_path, "plain")
    repo = tmp_path / "models--x--y"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    for f in d.iterdir():
        (repo / "blobs" / f"h-{f.name}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(f"../../blobs/h-{f.name}")
    with formats.open(snap) as src:
        assert len(src.names()) == 3


def test_meta_shards_and_side_files_stay_inside(tmp_path):
    from modelport.formats.pt import write_pt

    d = tmp_path / "meta"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"dim": 4, "n_layers": 1, "n_heads": 2}))
    outside = good_pt_zip(tmp_path / "outside.pth")
    (d / "consolidated.00.pth").symlink_to(outside)
    _refused(d, "meta", match="outside the model directory")
    del write_pt


# -- 3. memory bounded by the file ------------------------------------------------------------------------

@pytest.mark.parametrize("container", [write_pt_zip, write_pt_legacy])
@pytest.mark.parametrize("op", [b"r\xff\xff\xff\x7f", b"q\xff", b"j\xff\xff\xff\x7f", b"p99999999999\n"])
def test_huge_memo_indices_are_refused_before_unpickling(tmp_path, container, op):
    _refused(container(tmp_path / "m.pt", b"\x80\x02N" + op + b"."), match="memo index|not a plain|corrupt")


def test_memo_bomb_from_the_command_line_is_small(tmp_path):
    r = run_measured(["inspect", write_pt_zip(tmp_path / "m.pt", b"\x80\x02Nr\xff\xff\xff\xff.")])
    _clean_cli(r, "memo index")


def test_deflated_members_inflate_within_bounds(tmp_path):
    pkl = state_dict_pickle({"w": tensor_call("0", 1 << 28, 0, (1 << 28,), (1,))})
    # a storage claiming 1 GiB from a few kilobytes: 8 MiB of zeros deflated, its size raised in the directory
    src = write_pt_zip(tmp_path / "bomb.pt", pkl, {"0": bytes(8 << 20)}, compress={"data/0"})
    raw = bytearray(src.read_bytes())
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"archive/data/0"))
    raw[cd + 24:cd + 28] = struct.pack("<I", 1 << 30)
    src.write_bytes(bytes(raw))
    assert src.stat().st_size < 2 << 20
    r = run_measured(["convert", src, tmp_path / "o.safetensors"], timeout=20)
    _clean_cli(r, "inflate")


def test_a_deflated_byteorder_is_refused_without_echoing_it(tmp_path):
    src = write_pt_zip(tmp_path / "b.pt", state_dict_pickle({}), byteorder=b"x" * (8 << 20), compress={"byteorder"})
    with pytest.raises(FormatError) as err:
        formats.open(src)
    assert len(str(err.value)) < 400


def test_a_member_that_inflates_past_its_claimed_size_is_refused(tmp_path):
    from modelport.formats._torchzip import ZipReader

    src = write_pt_zip(tmp_path / "b.pt", b"x", {"0": bytes(4 << 20)}, compress={"data/0"})
    raw = bytearray(src.read_bytes())
    # lower the claimed size in the central directory (keep the stream): the reader must stop at the claim
    cd = raw.rfind(b"PK\x01\x02" + raw[raw.find(b"PK\x01\x02") + 4:raw.find(b"PK\x01\x02") + 4])
    zr = ZipReader(src, len(raw))
    name = "archive/data/0"
    zr.members[name].size = 1000
    with pytest.raises(FormatError, match="inflates past"):
        zr.read(name, allow_expanded=True)
    del cd


@pytest.mark.parametrize("kind", ["pt", "t7"])
def test_broadcast_views_are_refused_unless_allowed(tmp_path, kind):
    if kind == "pt":
        src = write_pt_zip(tmp_path / "e.pt", state_dict_pickle({"w": tensor_call("0", 1, 0, (500_000_000,), (0,))}), {"0": FLOATS16[:4]})
    else:
        src = t7_tensor_file(tmp_path / "e.t7", (500_000_000,), (0,), 1, 1)
    _refused(src, match="allow-expanded")
    with formats.open(src, None, __import__("modelport.formats.base", fromlist=["Options"]).Options(allow_expanded=True)) as s:
        assert s.info(s.names()[0]).numel == 500_000_000
    if kind == "t7":     # the diff that grew to 24 GB
        _clean_cli(run_measured(["diff", src, src]), "--allow-expanded")


def test_a_small_expand_stays_readable(tmp_path):
    src = write_pt_zip(tmp_path / "e.pt", state_dict_pickle({"w": tensor_call("0", 4, 0, (8, 4), (0, 1))}), {"0": FLOATS16})
    with formats.open(src) as s:
        assert bytes(s.read_bytes("w")) == FLOATS16 * 8


@pytest.mark.parametrize("rank", [65, 100_000])
def test_ranks_are_capped(tmp_path, rank):
    pkl = state_dict_pickle({"w": tensor_call("0", 4, 0, (1,) * rank, (1,) * rank)})
    _refused(write_pt_zip(tmp_path / "r.pt", pkl, {"0": FLOATS16}), match="dimensions")
    write_safetensors(tmp_path / "r.safetensors", {"w": {"dtype": "F32", "shape": [1] * rank, "data_offsets": [0, 4]}}, FLOATS16[:4])
    _refused(tmp_path / "r.safetensors", match="at most 64")
    if rank < 1000:
        _refused(t7_tensor_file(tmp_path / "r.t7", (1,) * rank, (1,) * rank), match="dimensions")


def test_shared_structures_do_not_explode(tmp_path):
    # L0 = [1]; Li = [L(i-1), L(i-1)]: 2**60 leaves from a few hundred bytes, as metadata beside a tensor
    body = b"K\x01\x85q\x000"
    for i in range(1, 60):
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i]) + b"0"
    body += b"h" + bytes([59])
    pkl = b"\x80\x02}(" + b"X\x01\x00\x00\x00m" + body + b"X\x01\x00\x00\x00w" + tensor_call("0", 4, 0, (4,), (1,)) + b"u."
    with formats.open(write_pt_zip(tmp_path / "s.pt", pkl, {"0": FLOATS16})) as s:
        assert s.names() == ["w"] and "not shown" in s.metadata["m"]


# -- 4. inputs that block ----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [None, "pt", "t7", "safetensors", "hf", "meta"])
def test_a_fifo_is_refused_without_blocking(tmp_path, fmt):
    fifo = tmp_path / "f.pt"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        formats.open(fifo, fmt)
    if fmt is None:
        _clean_cli(run_measured(["inspect", fifo, "--from", "pt"], timeout=5), "not a regular file")


def test_a_fifo_config_is_refused(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    r = run_measured(["convert", good_pt_zip(tmp_path / "g.pt"), tmp_path / "out", "--to", "hf", "--config", fifo], timeout=5)
    _clean_cli(r, "not a regular file")


# -- 5. one line, exit 2, never a traceback ------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("header", [
    DEEP, '{"w": ' + DEEP + "}", '{"__metadata__": [1, 2]}', '{"__metadata__": {"a": 1}}',
    '{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}',
    '{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
    '{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    '{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}', '{"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}',
    '{"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', '{"w": [1]}', '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [NaN, 4]}}',
    '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', '{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
])
def test_hostile_safetensors_headers(tmp_path, header):
    _refused(write_safetensors(tmp_path / "h.safetensors", header, FLOATS16))


@pytest.mark.parametrize("where,text", [
    ("config.json", DEEP), ("config.json", "[1]"), ("config.json", '{"n_layer": NaN}'), ("config.json", '{"a": "\\udc00"}'),
    ("model.safetensors.index.json", DEEP), ("model.safetensors.index.json", '{"weight_map": []}'),
    ("model.safetensors.index.json", '{"weight_map": {"w": 5}}'), ("model.safetensors.index.json", '{"weight_map": {"w": "x\\u0000"}}'),
])
def test_hostile_hf_json(tmp_path, where, text):
    d = _hf_dir(tmp_path)
    (d / where).write_text(text)
    _refused(d, "hf")


@pytest.mark.parametrize("params", [
    DEEP, "[]", '{"dim": "4096", "n_layers": 1, "n_heads": 2}', '{"dim": 4, "n_layers": 1, "n_heads": 2, "multiple_of": 0}',
    '{"dim": 4, "n_layers": 1, "n_heads": 2, "ffn_dim_multiplier": NaN}', '{"dim": 4, "n_layers": 1000000000000, "n_heads": 2}',
    '{"dim": 4, "n_layers": 1, "n_heads": 2, "norm_eps": Infinity}', '{"dim": ' + "4" * 5000 + ', "n_layers": 1, "n_heads": 2}',
    '{"dim": 4, "n_layers": 1, "n_heads": true}', '{"dim": 4, "n_layers": 1}',
])
def test_hostile_params_json(tmp_path, params):
    d = tmp_path / "meta"
    d.mkdir()
    (d / "params.json").write_text(params)
    good_pt_zip(d / "consolidated.00.pth")
    _refused(d, "meta")


def test_params_json_is_checked_against_the_weights(tmp_path):
    from modelport.formats.pt import write_pt
    from modelport.formats.safetensors import SafetensorsSource

    d = tmp_path / "meta"
    d.mkdir()
    names = {"tok_embeddings.weight": (6, 4), "layers.0.attention_norm.weight": (4,), "norm.weight": (4,), "output.weight": (6, 4)}
    header, off = {}, 0
    for n, shape in names.items():
        size = 4 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[n] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    st = write_safetensors(tmp_path / "w.safetensors", header, bytes(range(256)) * (off // 256 + 1))
    write_pt(SafetensorsSource(st), d / "consolidated.00.pth")
    (d / "params.json").write_text(json.dumps({"dim": 4, "n_layers": 12, "n_heads": 2, "vocab_size": 6}))
    _refused(d, "meta", match="n_layers is 12 but the weights hold 1")
    (d / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 2, "vocab_size": 6}))
    _refused(d, "meta", match="dim is 8")


@pytest.mark.parametrize("size", ["inf", "nan", "-5GB", "0", "1e400", "infGB"])
def test_bad_shard_sizes(size):
    import click

    from modelport.cli import parse_size

    with pytest.raises(click.BadParameter):
        parse_size(size)


def test_shard_size_inf_from_the_command_line(tmp_path):
    r = run_measured(["convert", good_pt_zip(tmp_path / "g.pt"), tmp_path / "o", "--to", "hf", "--shard-size", "inf"])
    assert r["rc"] == 2 and "Traceback" not in r["stderr"] and "not a size" in r["stderr"], r["stderr"]


@pytest.mark.parametrize("dst", ["file/out.safetensors", "file/deeper/out.safetensors", "/proc/modelport-out.safetensors",
                                 "/sys/modelport.safetensors", "/proc/self/modelport.safetensors"])
def test_destinations_that_cannot_be(tmp_path, dst):
    from modelport.convert import convert
    from modelport.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        convert(good_pt_zip(tmp_path / "g.pt"), dst if dst.startswith("/") else tmp_path / dst)
    if dst.startswith("file/deeper"):
        _clean_cli(run_measured(["convert", tmp_path / "g.pt", tmp_path / dst]), "is a file")


# -- 6. terminal injection ---------------------------------------------------------------------------------------

def click_command(fn):
    import click

    return click.command()(fn)


def test_names_and_metadata_are_printed_escaped(tmp_path):
    evil = "\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x1b[2K\u202e"
    header = {"__metadata__": {evil: evil}, evil: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    src = write_safetensors(tmp_path / "e.safetensors", header, FLOATS16[:4])
    from click.testing import CliRunner

    from modelport.cli import cli

    r = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "o.pt")])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    from modelport.diff import DiffReport, TensorDiff
    from modelport.render import print_diff

    report = DiffReport("a", "b", 0.0, 1, 0, [evil], [evil], [TensorDiff(evil, "shape", evil, evil)], [evil])
    r = CliRunner().invoke(click_command(lambda: print_diff(report)))
    assert evil[:3] not in r.output and "\x1b" not in r.output and "\\x1b]0;pwned" in r.output
    r = run_measured(["inspect", src])
    assert r["rc"] == 0, r["stderr"]
    for stream in (r["raw_stdout"], r["raw_stderr"]):
        assert b"\x1b" not in stream and b"\x07" not in stream and "\u202e".encode() not in stream
    r = run_measured(["inspect", write_pt_zip(tmp_path / "e.pt", state_dict_pickle({evil: tensor_call("0", 5, 0, (5,), (1,))}), {"0": FLOATS16})])
    assert r["rc"] == 2 and b"\x1b" not in r["raw_stderr"]


# -- 7. clear outcomes ------------------------------------------------------------------------------------------

def test_a_source_that_shrinks_is_a_format_error(tmp_path):
    from modelport.formats.safetensors import write_file

    src = tmp_path / "s.safetensors"
    with formats.open(good_pt_zip(tmp_path / "g.pt")) as g:
        write_file(g, src)
    s = formats.open(src)
    os.truncate(src, 60)
    with pytest.raises(FormatError, match="shrank"):
        write_file(s, tmp_path / "o.safetensors")
    s.close()


def test_force_replaces_a_file_in_one_rename(tmp_path, monkeypatch):
    from modelport import atomic

    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"old")
    calls = []
    monkeypatch.setattr(atomic.os, "rename", lambda *a: calls.append(("rename", a)) or os.rename(*a))
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda *a: calls.append(("replace", a)) or real_replace(*a))
    with atomic.atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and [c[0] for c in calls] == ["replace"]


def test_errors_are_modelport_errors():
    assert issubclass(FormatError, ModelportError)


@pytest.mark.parametrize("kind", ["pt", "t7"])
def test_a_huge_stride_on_a_size_1_dimension(tmp_path, kind):
    """Found by the soak: last-element bounds ignore size-1 dimensions, numpy does not."""
    big = 5404319552844595203
    if kind == "pt":
        src = write_pt_zip(tmp_path / "s.pt", state_dict_pickle({"w": tensor_call("0", 4, 0, (4, 1), (1, big))}), {"0": FLOATS16})
    else:
        src = t7_tensor_file(tmp_path / "s.t7", (4, 1), (1, big))
    with formats.open(src) as s:
        assert bytes(s.read_bytes(s.names()[0])) == (FLOATS16 if kind == "pt" else struct.pack("<4f", 0, 1, 2, 3))


@pytest.mark.parametrize("kind", ["pt", "t7", "safetensors"])
def test_a_mapped_source_that_shrinks_is_refused_before_reading(tmp_path, kind):
    src = good_pt_zip(tmp_path / "g.pt")
    if kind != "pt":
        with formats.open(src) as g:
            formats.get(kind).write(g, tmp_path / f"g.{kind}", __import__("modelport.formats.base", fromlist=["Options"]).Options())
        src = tmp_path / f"g.{kind}"
    s = formats.open(src)
    name = next(n for n in s.names() if s.span(n) is None) if kind == "pt" else s.names()[0]
    os.truncate(src, 40)
    with pytest.raises(FormatError, match="shrank"):
        s.read_bytes(name)
    s.close()


def test_deeply_nested_metadata_is_summarised(tmp_path):
    n = 50_000     # lists nested 50,000 deep beside a tensor: no RecursionError, no traceback
    pkl = b"\x80\x02}(X\x01\x00\x00\x00m" + b"]" * n + b"a" * (n - 1) + b"X\x01\x00\x00\x00w" + tensor_call("0", 4, 0, (4,), (1,)) + b"u."
    with formats.open(write_pt_zip(tmp_path / "d.pt", pkl, {"0": FLOATS16})) as s:
        assert s.names() == ["w"] and "not shown" in s.metadata["m"]


@pytest.mark.parametrize("op", [b"\x96" + struct.pack("<Q", 1 << 40), b"\x8e" + struct.pack("<Q", 1 << 40), b"B" + struct.pack("<I", 1 << 31)])
def test_a_legacy_pickle_length_past_the_file_allocates_nothing(tmp_path, op):
    """Found by the soak: from a file, the unpickler allocates an argument's length before reading it."""
    src = tmp_path / "l.pt"
    src.write_bytes(b"\x80\x05" + op + b"x" * 32)
    with pytest.raises(FormatError, match="past the end"):
        formats.open(src, "pt")


def test_measured_commands_report_their_own_peak_not_the_test_process():
    """run_measured's figures are the command's own: a large test process does not leak into the child's peak RSS."""
    ballast = bytearray(300 << 20)          # the test process grows by 300 MB (zero pages, touched below)
    ballast[::4096] = b"\1" * len(ballast[::4096])
    r = run_measured(["--version"])
    del ballast
    assert r["rc"] == 0 and "modelport" in r["stdout"]
    assert r["rss"] < 150 << 20, r["rss"]
    assert 0 < r["cpu"] < 3.5, r["cpu"]
