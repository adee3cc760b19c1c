import pytest

from modelport.atomic import atomic_output
from modelport.errors import DestinationExistsError


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
    with pytest.raises(DestinationExistsError, match="--force"):
        with atomic_output(dst):
            pass
    assert dst.read_bytes() == b"old"


def test_force_replaces_file_and_directory(tmp_path):
    for make in (lambda p: p.write_bytes(b"old"), lambda p: (p.mkdir(), (p / "f").write_text("old"))):
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
