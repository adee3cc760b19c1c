import pytest

from modelport import formats
from modelport.errors import FormatError, MissingDependencyError
from modelport.formats.base import Format


def test_ids_are_unique_and_registering_twice_raises():
    ids = [f.id for f in formats.all_formats()]
    assert len(ids) == len(set(ids))
    with pytest.raises(RuntimeError, match="registered twice"):
        formats.register(formats.get(ids[0]))


def test_a_format_with_a_missing_dependency_is_listed_with_its_package(monkeypatch):
    class Needy(Format):
        id = "needy-test"
        requires = (("surely_not_installed_mod", "surely-not-installed"),)

        def sniff(self, path):
            return True

    monkeypatch.setitem(formats._REGISTRY, "needy-test", Needy())
    assert Needy().missing() == ["surely-not-installed"]
    with pytest.raises(MissingDependencyError, match="pip install surely-not-installed"):
        formats.open("/", format="needy-test")


@pytest.mark.parametrize("content, said", [
    (b"", "empty file"),
    (b"PK\x03\x04" + b"\0" * 40, "zip archive"),
    (b"<!DOCTYPE html><html>", "HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS pointer"),
])
def test_unrecognised_files_say_what_they_are(tmp_path, content, said):
    p = tmp_path / "thing.bin"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=said):
        formats.detect(p)


def test_an_unreadable_file_is_not_called_empty(tmp_path, monkeypatch):
    path = tmp_path / "locked.bin"
    path.write_bytes(b"")
    assert "an empty file" in formats.describe_unknown(path)
    path.write_bytes(b"\x00" * 10)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("modelport.formats.base.open", refuse, raising=False)
    said = formats.describe_unknown(path)
    assert "cannot be read" in said and "Permission denied" in said and "empty" not in said
