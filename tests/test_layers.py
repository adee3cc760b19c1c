"""Imports point one way: errors/dtypes/atomic/runtime -> formats, t7 -> models -> convert, diff,
inspect, parity -> render, cli, testing, view. Every module is parsed, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modelport"

LAYERS = {"errors": 0, "dtypes": 0, "atomic": 0, "runtime": 0,
          "formats": 1, "t7": 1,
          "models": 2,
          "convert": 3, "diff": 3, "inspect": 3, "parity": 3,
          "render": 4, "cli": 4, "view": 4, "__main__": 4, "testing": 4, "batch": 4,
          "console": 4}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, imported modelport module) for every import in the file, at any depth."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "modelport"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "modelport":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else base))
    return out


def _layer(dotted: str) -> int | None:
    parts = dotted.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None     # the package root is the facade


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        assert name == "modelport" or _layer(name) is not None, f"{name}: add it to LAYERS"


def test_imports_point_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        mine = _layer(me)
        if mine is None:
            continue
        for line, target in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {me} imports {target}")
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_the_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("import json\n\ndef f():\n    if True:\n        from ..convert import layouts\n")
    assert _imports(probe, "modelport.formats.x") == [(5, "modelport.convert.layouts")]
    assert _layer("modelport.convert.layouts") > _layer("modelport.formats.x")
