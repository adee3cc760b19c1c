"""Content hashes for manifests (modelport/convert/hashing.py): the source's, in a thread, and its stop."""

from __future__ import annotations

import hashlib
import importlib
import threading

import pytest

from modelport.errors import FormatError

hashing = importlib.import_module("modelport.convert.hashing")


def test_a_background_hash_gives_each_files_digest(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100_001)
    (tmp_path / "b.json").write_text("{}")
    got = hashing.BackgroundHash(tmp_path, "sha256").get()
    assert [(e["path"], e["bytes"], e["sha256"]) for e in got] == [
        ("a.bin", 100_001, hashlib.sha256(b"x" * 100_001).hexdigest()),
        ("b.json", 2, hashlib.sha256(b"{}").hexdigest())]


def test_a_stopped_hash_ends_and_says_why(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"\0" * (3 * hashing._CHUNK))
    stop = threading.Event()
    stop.set()
    with pytest.raises(hashing.Cancelled):
        hashing.hash_file(p, "sha256", stop)
    h = hashing.BackgroundHash(p, "sha256")
    h.cancel()
    try:
        h.get()          # finished before the stop, or stopped: a digest or a one-line refusal, never a hang
    except FormatError as exc:
        assert "cannot hash" in str(exc)


def test_digests_taken_while_writing_are_used_only_while_the_size_agrees(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    known = {str(p.resolve()): (3, "taken-while-written")}
    assert hashing.file_entry("w.bin", p, "sha256", known)["sha256"] == "taken-while-written"
    p.write_bytes(b"abcd")          # changed since: hashed again
    assert hashing.file_entry("w.bin", p, "sha256", known)["sha256"] == hashlib.sha256(b"abcd").hexdigest()


def test_an_unexpected_error_in_the_thread_is_not_an_empty_file_list(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"a")
    monkeypatch.setattr(hashing, "hash_file", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        hashing.BackgroundHash(tmp_path, "sha256").get()
