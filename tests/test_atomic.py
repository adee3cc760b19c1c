import json
import os
import subprocess
import sys

import pytest

from modelport.atomic import MARKER, atomic_output, check_overlap, remove_stale_temps, write_marker
from modelport.errors import SPELLING, DestinationExistsError, OverlapError


def test_success_renames_into_place(tmp_path):
    dst = tmp_path / "out.bin"
    with atomic_output(dst) as tmp:
        assert tmp.parent == dst.parent and tmp != dst
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [dst]


def test_existing_destination_refused_without_force(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(DestinationExistsError, match="force=True"):
        with atomic_output(dst):
            pass
    assert dst.read_bytes() == b"old"


def test_refusal_spells_the_option_as_the_caller_passes_it(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    token = SPELLING.set("cli")
    try:
        with pytest.raises(DestinationExistsError, match="pass --force to"):
            with atomic_output(dst):
                pass
    finally:
        SPELLING.reset(token)


def test_force_replaces_file_and_modelports_own_directory(tmp_path):
    def own_dir(p):
        p.mkdir()
        (p / "f").write_text("old")
        write_marker(p, format="hf")

    for make in (lambda p: p.write_bytes(b"old"), own_dir, lambda p: p.mkdir()):
        dst = tmp_path / "out"
        make(dst)
        with atomic_output(dst, force=True) as tmp:
            tmp.mkdir()
            (tmp / "g").write_text("new")
        assert sorted(p.name for p in dst.iterdir()) == ["g"]
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
        import shutil

        shutil.rmtree(dst)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing_and_keeps_old(tmp_path, exc):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_output(dst, force=True) as tmp:
            tmp.write_bytes(b"partial")
            raise exc
    assert dst.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dst]


def test_force_refuses_a_directory_modelport_did_not_write(tmp_path):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(DestinationExistsError, match=f"no {MARKER}"):
        with atomic_output(dst, force=True) as tmp:
            tmp.write_bytes(b"new")
    assert (dst / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_overlap_refused_in_every_spelling(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    src = proj / "model.pt"
    src.write_bytes(b"weights")
    (tmp_path / "link").symlink_to(proj)
    os.link(src, tmp_path / "hard.pt")
    for dst in (src, proj / ".." / "proj" / "model.pt", proj, tmp_path, tmp_path / "link", tmp_path / "hard.pt",
                tmp_path / "link" / "model.pt"):
        with pytest.raises(OverlapError, match="destroy the input"):
            check_overlap(src, dst)
    for dst in (proj / "inside.safetensors", proj / "sub" / "x"):      # inside a source directory
        with pytest.raises(OverlapError, match="inside the source directory"):
            check_overlap(proj, dst)
    check_overlap(src, proj / "beside.safetensors")      # a new file next to a file source is fine
    check_overlap(src, tmp_path / "elsewhere")


def test_overlap_follows_symlinks_out_of_a_source_directory(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc").write_bytes(b"weights")
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(blobs / "abc")
    with pytest.raises(OverlapError, match="contains the source"):
        check_overlap(snap, blobs)


def test_stale_temps_of_dead_processes_removed_with_a_note(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    dst = tmp_path / "out.safetensors"
    stale = tmp_path / f".out.safetensors.modelport-{dead_pid}.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / f".out.safetensors.modelport-{os.getppid()}.tmp"     # a running process's: kept
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.bin.modelport-{dead_pid}.tmp"               # another destination's: kept
    other.write_bytes(b"x")
    notes = []
    with atomic_output(dst, notes=notes) as tmp:
        tmp.write_bytes(b"new")
    assert not stale.exists() and live.exists() and other.exists() and dst.read_bytes() == b"new"
    assert len(notes) == 1 and str(stale) in notes[0] and f"process {dead_pid}" in notes[0]
    assert remove_stale_temps(dst) == []


def test_the_marker_lists_the_files_it_covers(tmp_path):
    from modelport.atomic import marker_entries

    d = tmp_path / "out"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"a")
    (d / "sub" / "b.bin").write_bytes(b"b")
    write_marker(d, format="hf")
    assert json.loads((d / MARKER).read_text())["files"] == ["a.bin", "sub/b.bin"]
    assert marker_entries(d) == {"a.bin", "sub/b.bin"}
    (d / MARKER).write_text(json.dumps({"written_by": "modelport", "output": {"directory": True, "files": [
        {"path": "a.bin", "sha256": "0" * 64}]}}))                              # a directory manifest
    assert marker_entries(d) == {"a.bin"}
    with pytest.raises(DestinationExistsError, match="does not list 'sub'"):
        with atomic_output(d, force=True) as tmp:
            tmp.mkdir()
    (d / MARKER).unlink()
    (d / MARKER).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match="not a regular file"):
        marker_entries(d)
    assert (d / "a.bin").is_file() and (d / "sub" / "b.bin").is_file()
